"""Weight-space science core: describe a checkpoint once, then generate graphs, specs, symmetries and modules.

Exports load on first use (PEP 562), so light modules such as `metanets.tensor_stats` import without torch."""

from importlib import import_module

_EXPORTS = {
    "CONVERTER_VERSION": "architecture", "ArchitectureDescription": "architecture", "ArchitectureError": "architecture",
    "Hints": "architecture", "InputSpec": "architecture", "NodeGroup": "architecture", "Op": "architecture",
    "Program": "architecture", "TensorSpec": "architecture", "compile_program": "architecture",
    "describe": "architecture", "describe_module": "architecture", "parse_declarative": "architecture",
    "expected_edges": "graph.build", "to_graph": "graph.build", "graph_to_state_dict": "graph.inverse",
    "RebuiltNetwork": "runnable", "capture_activations": "runnable", "rebuild": "runnable",
    "apply_symmetry": "symmetry", "random_symmetry": "symmetry",
    "UNFEntry": "unf_spec", "unf_spec": "unf_spec", "unf_tensors": "unf_spec",
    "MetanetError": "errors", "ZooRecipe": "zoo", "ZooMember": "zoo", "generate_zoo": "zoo", "load_zoo": "zoo",
    "load_member": "zoo", "TrainConfig": "training", "TrainedMetanet": "training", "train_metanet": "training",
    "load_metanet": "training", "predict": "training", "compatible": "training", "group_split": "splits",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'metanets' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
