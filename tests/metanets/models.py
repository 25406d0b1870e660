"""Small random-initialised models of every supported family, with the hints and inputs each needs (float64)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: tuple
    hints: dict | None = None
    traced: bool = False
    atol: float = 1e-9

    def __call__(self, state_dict=None):
        """Outputs of the original model, with ``state_dict`` loaded if given (the original is restored)."""
        saved = {k: v.clone() for k, v in self.model.state_dict().items()} if state_dict is not None else None
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        try:
            with torch.no_grad():
                out = self.model(*self.inputs)
        finally:
            if saved is not None:
                self.model.load_state_dict(saved)
        return getattr(out, "logits", out)


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial norm parameters and running statistics, so that permuting them matters."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _ready(model: nn.Module) -> nn.Module:
    return _randomise_norms(model).double().eval()


class BasicBlockNet(nn.Module):
    """A CIFAR-style ResNet stem plus two BasicBlocks, the second with a projection shortcut (traced)."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = BasicBlock(8, 8)
        self.block2 = BasicBlock(8, 12, stride=2, downsample=nn.Sequential(
            nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.block2(self.block1(F.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyLM(nn.Module):
    """Pre-LN transformer language model: nn.MultiheadAttention, learned positions, output tied to the embedding."""

    def __init__(self, vocab=23, width=16, heads=4, layers=2, length=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.1)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, ids):
        x = self.emb(ids) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return F.linear(self.ln_f(x), self.emb.weight)


class _Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@functools.cache
def case(name: str) -> Case:
    torch.manual_seed(0)
    if name == "mlp":
        m = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))
        return Case(name, _ready(m), (torch.randn(4, 5, generator=_gen(1), dtype=torch.float64),),
                    {"activation": "tanh"})
    if name == "cnn_bn":
        m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1),
                          nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 4))
        return Case(name, _ready(m), (torch.randn(2, 3, 4, 4, generator=_gen(1), dtype=torch.float64),),
                    {"global_pool": "flatten"})
    if name == "cnn_gn":
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
        return Case(name, _ready(m), (torch.randn(2, 3, 5, 5, generator=_gen(1), dtype=torch.float64),),
                    traced=True)
    if name == "resnet_blocks":
        return Case(name, _ready(BasicBlockNet()), (torch.randn(2, 3, 8, 8, generator=_gen(1), dtype=torch.float64),),
                    traced=True)
    if name == "resnet18":
        from torchvision.models import resnet18

        return Case(name, _ready(resnet18(num_classes=7)),
                    (torch.randn(1, 3, 16, 16, generator=_gen(1), dtype=torch.float64),), atol=1e-8)
    if name == "resnet_bottleneck":
        from torchvision.models.resnet import Bottleneck, ResNet

        m = ResNet(Bottleneck, [1, 2, 1, 1], num_classes=6, width_per_group=16)
        m.layer3, m.layer4, m.fc = nn.Identity(), nn.Identity(), nn.Linear(512, 6)  # two stages keep it small
        return Case(name, _ready(m), (torch.randn(1, 3, 32, 32, generator=_gen(1), dtype=torch.float64),), atol=1e-8)
    if name == "tiny_lm":
        return Case(name, _ready(TinyLM()), (torch.randint(0, 23, (2, 6), generator=_gen(1)),), traced=True)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=31, n_positions=12, n_embd=16, n_layer=2, n_head=4, bos_token_id=0,
                         eos_token_id=0)
        return Case(name, _ready(GPT2LMHeadModel(cfg)), (torch.randint(0, 31, (2, 7), generator=_gen(1)),),
                    {"num_heads": 4})
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return Case(name, _ready(LlamaForCausalLM(cfg)), (torch.randint(0, 29, (2, 7), generator=_gen(1)),),
                    {"num_heads": 4}, atol=1e-5)
    if name == "llama_gqa":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                          tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return Case(name, _ready(LlamaForCausalLM(cfg)), (torch.randint(0, 29, (2, 5), generator=_gen(1)),),
                    {"num_heads": 4}, atol=1e-5)
    if name == "vit":
        import timm

        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=16,
                              depth=2, num_heads=4, num_classes=5)
        return Case(name, _ready(m), (torch.randn(2, 3, 16, 16, generator=_gen(1), dtype=torch.float64),),
                    {"num_heads": 4})
    if name == "vit_avg":
        import timm

        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=16,
                              depth=1, num_heads=2, num_classes=3, global_pool="avg", class_token=False,
                              init_values=0.1)
        return Case(name, _ready(m), (torch.randn(2, 3, 16, 16, generator=_gen(1), dtype=torch.float64),),
                    {"num_heads": 2})
    if name == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=27, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=24, max_position_embeddings=12, num_labels=3)
        return Case(name, _ready(BertForSequenceClassification(cfg)),
                    (torch.randint(0, 27, (2, 6), generator=_gen(1)),), {"num_heads": 4})
    raise KeyError(name)


SYMMETRY_CASES = ["mlp", "cnn_bn", "cnn_gn", "resnet_blocks", "resnet18", "resnet_bottleneck", "tiny_lm", "gpt2",
                  "llama", "llama_gqa", "vit", "vit_avg", "bert"]


@functools.cache
def described(name: str):
    from metanets import describe, describe_module

    c = case(name)
    if c.traced:
        return describe_module(c.model, c.inputs)
    return describe(c.model.state_dict(), c.hints)
GRAPH_CASES = [n for n in SYMMETRY_CASES if n != "resnet18"]  # resnet18 (11M edges) is exercised by the benchmark
