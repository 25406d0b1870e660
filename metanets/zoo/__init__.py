"""Model zoos (small CNNs on digits, SIREN INRs of digits): deterministic by seed, batched, resumable."""
from .generate import generate_zoo
from .recipe import ZooMember, ZooRecipe
from .store import load_member, load_zoo

__all__ = ["ZooMember", "ZooRecipe", "generate_zoo", "load_member", "load_zoo"]
