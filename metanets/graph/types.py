"""Vocabularies of node and edge types of the parameter graph (indices are stored in the graph)."""

NODE_TYPES = ("input", "hidden", "output", "bias", "norm", "head", "position", "vocab",
              "norm_weight", "norm_bias", "running_mean", "running_var", "norm_group", "cls")
EDGE_TYPES = ("linear", "conv", "bias", "embedding", "tied_embedding", "position", "cls", "norm_weight", "norm_bias",
              "running_mean", "running_var", "layerscale", "q", "k", "v", "o", "residual", "product", "head",
              "norm_group", "flatten")
NODE = {t: i for i, t in enumerate(NODE_TYPES)}
EDGE = {t: i for i, t in enumerate(EDGE_TYPES)}
EXTRA_EDGE_TYPES = ("residual", "product", "head", "norm_group", "flatten")
# the elementwise function applied to a node's value ("none": inputs, parameter nodes, outputs; "other": a function
# outside this list); append only, stored metanets index into it
ACTIVATION_TYPES = ("none", "other", "relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "identity", "leaky_relu",
                    "elu", "softplus", "mish", "hardswish", "relu6")
ACTIVATION = {t: i for i, t in enumerate(ACTIVATION_TYPES)}
