"""ganforge architectures and the checkpoint format. Depends on torch and safetensors only."""
from .classifier import DomainClassifier, DomainClassifierConfig
from .conditional import (
    ConditionalGenerator,
    ConditionalGeneratorConfig,
    ProjectionDiscriminator,
    ProjectionDiscriminatorConfig,
)
from .mlp import MLPDiscriminator, MLPDiscriminatorConfig, MLPGenerator, MLPGeneratorConfig
from .pix2pix import PatchDiscriminator, PatchDiscriminatorConfig, UNetGenerator, UNetGeneratorConfig


# name -> nn.Module class; each class carries `config_class`, its frozen config dataclass.
ARCHITECTURES = {
    "ConditionalGenerator": ConditionalGenerator,
    "ProjectionDiscriminator": ProjectionDiscriminator,
    "MLPGenerator": MLPGenerator,
    "MLPDiscriminator": MLPDiscriminator,
    "DomainClassifier": DomainClassifier,
    "UNetGenerator": UNetGenerator,
    "PatchDiscriminator": PatchDiscriminator,
}

from .checkpoint import build, load, read_metadata, save  # noqa: E402

__all__ = ["ARCHITECTURES", "build", "load", "read_metadata", "save"]
