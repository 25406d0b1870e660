"""Recognise common architecture families from state-dict names and shapes and write their programs.

Each family is a ``detect`` (returns the key prefix, or None) and a ``build`` (returns a Program); facts that
names cannot give come from Hints.
"""
from __future__ import annotations

import re
import torch

from .builder import ProgramBuilder
from .description import Program
from .errors import ArchitectureError
from .hints import Hints

StateDict = dict[str, torch.Tensor]


def _prefix(keys, anchor: str) -> str | None:
    """The prefix before ``anchor`` (a regex for a full key suffix), if some key ends with it."""
    for k in keys:
        m = re.fullmatch(rf"(.*?){anchor}", k)
        if m:
            return m.group(1)
    return None


def _indices(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))})


class _Family:
    """Shared helpers: optional-parameter lookup relative to the family's prefix."""

    name = ""

    def __init__(self, sd: StateDict, hints: Hints, prefix: str):
        self.sd, self.hints, self.prefix = sd, hints, prefix
        self.b = ProgramBuilder(self.name, prefix)

    def has(self, key: str) -> bool:
        return self.prefix + key in self.sd

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.sd[self.prefix + key].shape)

    def keys(self, module: str, *names: str) -> dict[str, str | None]:
        return {n.split(":")[0]: f"{module}.{n.split(':')[-1]}" if self.has(f"{module}.{n.split(':')[-1]}")
                else None for n in names}

    def norm(self, kind: str, module: str, x: str, **attrs) -> str:
        names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        return self.b(kind, module, x, params=self.keys(module, *names), **attrs)

    def linear(self, module: str, x: str, **attrs) -> str:
        return self.b("linear", module, x, params=self.keys(module, "weight", "bias"), **attrs)

    def conv(self, module: str, x: str, stride: int = 1, padding: int | None = None) -> str:
        k = self.shape(f"{module}.weight")[2:]
        pad = [s // 2 for s in k] if padding is None else padding
        return self.b("conv", module, x, params=self.keys(module, "weight", "bias"), stride=stride, padding=pad)

    def tied_head(self, module: str, x: str, embedding: str, default_tied: bool) -> str:
        """A vocabulary readout that shares the embedding matrix when the checkpoint says so."""
        key, emb = self.prefix + f"{module}.weight", self.prefix + embedding
        tied = default_tied if key not in self.sd else (
            self.sd[key].shape == self.sd[emb].shape and torch.equal(self.sd[key], self.sd[emb]))
        if not tied and key not in self.sd:
            return x
        if tied:
            if key in self.sd:
                self.b.aliases[key] = emb
            return self.b("linear", module, x, params={"weight": embedding})
        return self.linear(module, x)


class Sequential(_Family):
    """``nn.Sequential`` MLPs and CNNs: numbered modules; activation, padding and pooling come from hints."""

    name = "sequential"

    @staticmethod
    def detect(keys) -> str | None:
        prefixes = {m.group(1) for k in keys if (m := re.fullmatch(r"(.*?)(\d+)\.[A-Za-z_]+", k))}
        if len(prefixes) == 1 and all(re.fullmatch(r".*?\d+\.[A-Za-z_]+", k) for k in keys):
            return prefixes.pop()
        return None

    def build(self) -> Program:
        h = self.hints
        idx = _indices([k[len(self.prefix):] for k in self.sd], r"(\d+)\.[A-Za-z_]+")
        layers = [(i, self.shape(f"{i}.weight") if self.has(f"{i}.weight") else None) for i in idx]
        first = next((s for _, s in layers if s is not None and len(s) >= 2), None)
        if first is None:
            raise ArchitectureError("sequential: no linear or convolution weight found")
        act = h.activation or "relu"
        conv = len(first) > 2
        x = self.b.input("x", "image" if conv else "features", first[1], h.input_shape)
        last_weight = max(i for i, s in layers if s is not None and len(s) >= 2)
        for i, shape in layers:
            m = str(i)
            if self.has(f"{m}.running_mean") or self.has(f"{m}.running_var"):
                x = self.norm("batchnorm", m, x, eps=h.eps or 1e-5)
            elif shape is not None and len(shape) == 1:
                if conv and h.groupnorm_groups:
                    x = self.norm("groupnorm", m, x, num_groups=h.groupnorm_groups, eps=h.eps or 1e-5)
                elif conv:
                    raise ArchitectureError(f"sequential: norm {self.prefix + m!r} after a convolution needs "
                                            f"hint 'groupnorm_groups'")
                else:
                    x = self.norm("layernorm", m, x, eps=h.eps or 1e-5)
            elif shape is not None and len(shape) > 2:
                x = self.conv(m, x, stride=h.conv_stride or 1, padding=h.conv_padding)
            elif shape is not None and len(shape) == 2:
                if conv:
                    x = self._to_features(x, shape[1])
                    conv = False
                x = self.linear(m, x)
            else:
                raise ArchitectureError(f"sequential: module {self.prefix + m!r} has no weight of a known kind")
            weight = shape is not None and len(shape) >= 2
            if i < last_weight and (not weight or not self._norm_follows(layers, i)):
                x = self.b("act", f"{m}.act", x, fn=act)
        return self.b.program(x)

    def _norm_follows(self, layers, i) -> bool:
        nxt = next(((j, s) for j, s in layers if j > i), None)
        return nxt is not None and (nxt[1] is None or len(nxt[1]) == 1)

    def _to_features(self, x: str, in_features: int) -> str:
        last_conv = next(o for o in reversed(self.b.ops) if o.kind == "conv")
        channels = self.sd[last_conv.params["weight"]].shape[0]
        pool = self.hints.global_pool or ("avg" if in_features == channels else "flatten")
        if pool == "avg":
            x = self.b("adaptive_avgpool", "pool", x, output_size=1)
        return self.b("flatten", "flatten", x, start_dim=1)


class ResNet(_Family):
    """torchvision ResNet (BasicBlock or Bottleneck, BatchNorm, 1x1-conv projection shortcuts)."""

    name = "torchvision_resnet"

    @staticmethod
    def detect(keys) -> str | None:
        p = _prefix(keys, r"layer1\.0\.conv1\.weight")
        return p if p is not None and p + "conv1.weight" in keys and p + "bn1.weight" in keys else None

    def build(self) -> Program:
        b, h = self.b, self.hints
        keys = [k[len(self.prefix):] for k in self.sd]
        x = b.input("x", "image", self.shape("conv1.weight")[1], h.input_shape)
        x = self.conv("conv1", x, stride=2)
        x = b("act", "relu", self.norm("batchnorm", "bn1", x), fn="relu")
        x = b("maxpool", "maxpool", x, kernel_size=3, stride=2, padding=1)
        bottleneck = "layer1.0.conv3.weight" in keys
        for stage in _indices(keys, r"layer(\d+)\.\d+\.conv1\.weight"):
            for blk in _indices(keys, rf"layer{stage}\.(\d+)\.conv1\.weight"):
                stride = 2 if stage > 1 and blk == 0 else 1
                x = self._block(f"layer{stage}.{blk}", x, stride, bottleneck)
        x = b("flatten", "flatten", b("adaptive_avgpool", "avgpool", x, output_size=1), start_dim=1)
        if self.has("fc.weight"):
            x = self.linear("fc", x)
        return b.program(x)

    def _block(self, m: str, x: str, stride: int, bottleneck: bool) -> str:
        b = self.b
        y = x
        convs = (1, 2, 3) if bottleneck else (1, 2)
        for j in convs:
            s = stride if j == (2 if bottleneck else 1) else 1
            y = self.norm("batchnorm", f"{m}.bn{j}", self.conv(f"{m}.conv{j}", y, stride=s))
            if j != convs[-1]:
                y = b("act", f"{m}.relu{j}", y, fn="relu")
        if self.has(f"{m}.downsample.0.weight"):
            x = self.norm("batchnorm", f"{m}.downsample.1", self.conv(f"{m}.downsample.0", x, stride=stride))
        return b("act", f"{m}.relu", b("add", f"{m}.add", y, x), fn="relu")


class GPT2(_Family):
    """Hugging Face GPT-2: Conv1D weights stored (in, out), packed ``c_attn``, learned positions, tied head."""

    name = "gpt2"

    @staticmethod
    def detect(keys) -> str | None:
        return _prefix(keys, r"h\.0\.attn\.c_attn\.weight")

    def build(self) -> Program:
        b, h = self.b, self.hints
        width = self.shape("wte.weight")[1]
        heads = h.heads(self.name, width)
        eps, act = h.eps or 1e-5, h.activation or "gelu_tanh"
        x = b("embedding", "wte", b.input("input_ids", "tokens"), params={"weight": "wte.weight"})
        x = b("add_positions", "wpe", x, params={"weight": "wpe.weight"})
        keys = [k[len(self.prefix):] for k in self.sd]
        for i in _indices(keys, r"h\.(\d+)\.attn\.c_attn\.weight"):
            m = f"h.{i}"
            a = b("attention", f"{m}.attn", self.norm("layernorm", f"{m}.ln_1", x, eps=eps),
                  params={**self.keys(f"{m}.attn", "qkv_weight:c_attn.weight", "qkv_bias:c_attn.bias",
                                      "o_weight:c_proj.weight", "o_bias:c_proj.bias",
                                      "causal_mask:bias", "masked_bias:masked_bias")},
                  heads=heads, transposed=True, causal=True if h.causal is None else h.causal)
            x = b("add", f"{m}.add_1", a, x)
            y = self.linear(f"{m}.mlp.c_fc", self.norm("layernorm", f"{m}.ln_2", x, eps=eps), transposed=True)
            y = self.linear(f"{m}.mlp.c_proj", b("act", f"{m}.mlp.act", y, fn=act), transposed=True)
            x = b("add", f"{m}.add_2", y, x)
        x = self.norm("layernorm", "ln_f", x, eps=eps)
        lm_prefix = self.prefix.removesuffix("transformer.")
        if self.prefix.endswith("transformer.") and lm_prefix + "lm_head.weight" in self.sd:
            self.prefix, self.b.prefix = lm_prefix, lm_prefix
            x = self.tied_head("lm_head", x, "transformer.wte.weight", default_tied=True)
        return b.program(x)


class Llama(_Family):
    """LLaMA-style decoders (Hugging Face names): q/k/v/o, gate/up/down, RMSNorm, rotary positions."""

    name = "llama"

    @staticmethod
    def detect(keys) -> str | None:
        return _prefix(keys, r"layers\.0\.self_attn\.q_proj\.weight")

    def build(self) -> Program:
        b, h = self.b, self.hints
        width = self.shape("embed_tokens.weight")[1]
        heads = h.heads(self.name, width)
        dh = self.shape("layers.0.self_attn.q_proj.weight")[0] // heads
        kv = h.num_kv_heads or self.shape("layers.0.self_attn.k_proj.weight")[0] // max(dh, 1)
        eps, act = h.eps or 1e-6, h.activation or "silu"
        x = b("embedding", "embed_tokens", b.input("input_ids", "tokens"), params={"weight": "embed_tokens.weight"})
        keys = [k[len(self.prefix):] for k in self.sd]
        for i in _indices(keys, r"layers\.(\d+)\.self_attn\.q_proj\.weight"):
            m = f"layers.{i}"
            y = b("rmsnorm", f"{m}.input_layernorm", x, params={"weight": f"{m}.input_layernorm.weight"},
                  eps=eps, upcast=True)
            roles = [f"{r}_{kind}:{r}_proj.{kind}" for r in "qkvo" for kind in ("weight", "bias")]
            a = b("attention", f"{m}.self_attn", y, params=self.keys(f"{m}.self_attn", *roles), heads=heads,
                  kv_heads=kv, causal=True if h.causal is None else h.causal, rope_theta=h.rope_theta or 10000.0)
            x = b("add", f"{m}.add_1", a, x)
            y = b("rmsnorm", f"{m}.post_attention_layernorm", x, eps=eps, upcast=True,
                  params={"weight": f"{m}.post_attention_layernorm.weight"})
            g = b("act", f"{m}.mlp.act", self.linear(f"{m}.mlp.gate_proj", y), fn=act)
            y = self.linear(f"{m}.mlp.down_proj", b("mul", f"{m}.mlp.mul", g, self.linear(f"{m}.mlp.up_proj", y)))
            x = b("add", f"{m}.add_2", y, x)
        x = b("rmsnorm", "norm", x, params={"weight": "norm.weight"}, eps=eps, upcast=True)
        lm_prefix = self.prefix.removesuffix("model.")
        if self.prefix.endswith("model.") and lm_prefix + "lm_head.weight" in self.sd:
            self.prefix, self.b.prefix = lm_prefix, lm_prefix
            x = self.tied_head("lm_head", x, "model.embed_tokens.weight", default_tied=False)
        return b.program(x)


class ViT(_Family):
    """timm VisionTransformer: patch conv, class token, learned positions, pre-LN blocks, token or mean pooling."""

    name = "timm_vit"

    @staticmethod
    def detect(keys) -> str | None:
        p = _prefix(keys, r"patch_embed\.proj\.weight")
        return p if p is not None and p + "blocks.0.attn.qkv.weight" in keys else None

    def build(self) -> Program:
        b, h = self.b, self.hints
        width = self.shape("patch_embed.proj.weight")[0]
        heads = h.heads(self.name, width)
        eps, act = h.eps or 1e-6, h.activation or "gelu"
        x = b.input("x", "image", self.shape("patch_embed.proj.weight")[1], h.input_shape)
        patch = self.shape("patch_embed.proj.weight")[2:]
        x = b("conv", "patch_embed.proj", x, params=self.keys("patch_embed.proj", "weight", "bias"),
              stride=list(patch), padding=0)
        x = b("to_tokens", "patch_embed.tokens", x)
        if self.has("cls_token"):
            x = b("cls_token", "cls_token", x, params={"weight": "cls_token"})
        if self.has("pos_embed"):
            x = b("add_positions", "pos_embed", x, params={"weight": "pos_embed"})
        keys = [k[len(self.prefix):] for k in self.sd]
        for i in _indices(keys, r"blocks\.(\d+)\.attn\.qkv\.weight"):
            m = f"blocks.{i}"
            a = b("attention", f"{m}.attn", self.norm("layernorm", f"{m}.norm1", x, eps=eps), heads=heads,
                  params=self.keys(f"{m}.attn", "qkv_weight:qkv.weight", "qkv_bias:qkv.bias",
                                   "o_weight:proj.weight", "o_bias:proj.bias"))
            if self.has(f"{m}.ls1.gamma"):
                a = b("layerscale", f"{m}.ls1", a, params={"weight": f"{m}.ls1.gamma"})
            x = b("add", f"{m}.add_1", a, x)
            y = self.linear(f"{m}.mlp.fc1", self.norm("layernorm", f"{m}.norm2", x, eps=eps))
            y = self.linear(f"{m}.mlp.fc2", b("act", f"{m}.mlp.act", y, fn=act))
            if self.has(f"{m}.ls2.gamma"):
                y = b("layerscale", f"{m}.ls2", y, params={"weight": f"{m}.ls2.gamma"})
            x = b("add", f"{m}.add_2", y, x)
        if self.has("norm.weight"):
            x = self.norm("layernorm", "norm", x, eps=eps)
        if self.has("fc_norm.weight"):
            x = self.norm("layernorm", "fc_norm", b("mean_tokens", "pool", x, start=1 if self.has("cls_token")
                                                    else 0), eps=eps)
        else:
            x = b("select_token", "pool", x, index=0)
        if self.has("head.weight"):
            x = self.linear("head", x)
        return b.program(x)


class Bert(_Family):
    """Hugging Face BERT encoders: word, position and token-type embeddings, post-LN blocks, pooler, classifier."""

    name = "bert"

    @staticmethod
    def detect(keys) -> str | None:
        return _prefix(keys, r"embeddings\.word_embeddings\.weight")

    def build(self) -> Program:
        b, h = self.b, self.hints
        width = self.shape("embeddings.word_embeddings.weight")[1]
        heads = h.heads(self.name, width)
        eps, act = h.eps or 1e-12, h.activation or "gelu"
        e = "embeddings"
        x = b("embedding", f"{e}.word_embeddings", b.input("input_ids", "tokens"),
              params={"weight": f"{e}.word_embeddings.weight"})
        if self.has(f"{e}.token_type_embeddings.weight"):
            x = b("add_embedding", f"{e}.token_type_embeddings", x,
                  params={"weight": f"{e}.token_type_embeddings.weight",
                          "token_type_ids": f"{e}.token_type_ids" if self.has(f"{e}.token_type_ids") else None})
        x = b("add_positions", f"{e}.position_embeddings", x, params={
            "weight": f"{e}.position_embeddings.weight", "position_ids": f"{e}.position_ids"
            if self.has(f"{e}.position_ids") else None})
        x = self.norm("layernorm", f"{e}.LayerNorm", x, eps=eps)
        keys = [k[len(self.prefix):] for k in self.sd]
        for i in _indices(keys, r"encoder\.layer\.(\d+)\.attention\.self\.query\.weight"):
            m = f"encoder.layer.{i}"
            roles = [f"{r}_{kind}:self.{n}.{kind}" for r, n in zip("qkv", ("query", "key", "value"))
                     for kind in ("weight", "bias")] + ["o_weight:output.dense.weight", "o_bias:output.dense.bias"]
            a = b("attention", f"{m}.attention", x, params=self.keys(f"{m}.attention", *roles), heads=heads)
            x = self.norm("layernorm", f"{m}.attention.output.LayerNorm", b("add", f"{m}.add_1", a, x), eps=eps)
            y = b("act", f"{m}.intermediate.act", self.linear(f"{m}.intermediate.dense", x), fn=act)
            y = self.linear(f"{m}.output.dense", y)
            x = self.norm("layernorm", f"{m}.output.LayerNorm", b("add", f"{m}.add_2", y, x), eps=eps)
        if not self.has("pooler.dense.weight"):
            return b.program(x)
        pooled = b("act", "pooler.act", self.linear("pooler.dense", b("select_token", "pooler.first", x)), fn="tanh")
        outer = self.prefix.removesuffix("bert.")
        if self.prefix.endswith("bert.") and outer + "classifier.weight" in self.sd:
            self.prefix, self.b.prefix = outer, outer
            return b.program(self.linear("classifier", pooled))
        return b.program(x, pooled)  # BertModel: last hidden state and pooled output


FAMILIES: dict[str, type[_Family]] = {f.name: f for f in (ResNet, GPT2, Llama, ViT, Bert, Sequential)}


def recognise(state_dict: StateDict, hints: Hints) -> Program | None:
    """The program of the first family whose names match, or None when no family recognises the checkpoint."""
    keys = list(state_dict)
    if hints.family is not None:
        if hints.family not in FAMILIES:
            raise ArchitectureError(f"hint 'family' {hints.family!r} is not one of {sorted(FAMILIES)}")
        candidates = [FAMILIES[hints.family]]
    else:
        candidates = list(FAMILIES.values())
    for fam in candidates:
        prefix = fam.detect(keys)
        if prefix is not None:
            return fam(state_dict, hints, prefix).build()
    if hints.family is not None:
        raise ArchitectureError(f"the checkpoint does not have the tensor names of family {hints.family!r}")
    return None

