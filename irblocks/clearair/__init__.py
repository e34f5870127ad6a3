"""ClearAIR (seed 003): guidance priors (quality, regions, degradation), their adapters
for the paper's pretrained models, and the guided blocks (QGM, mask average pooling,
pattern-token semantic cross-attention, degradation prompt + DAM, the QGM -> SCA -> DAM
unit). Importing this package registers everything."""
from .adapters import DACLIPDegradationPrior, DeQAQualityPrior, SAM2RegionPrior
from .dam import DegradationAwareModule, DegradationPromptGenerator
from .guidance_block import ClearAIRGuidance
from .mask_pool import MaskAveragePool
from .priors_common import GuidancePrior, PriorOutputError  # noqa: F401
from .priors_degradation import ClassicalDegradationPrior
from .priors_quality import NSSQualityPrior
from .priors_regions import KMeansRegionPrior
from .qgm import QualityAdapter, QualityGuidance
from .sca import SemanticCrossAttention

__all__ = [
    "NSSQualityPrior", "KMeansRegionPrior", "ClassicalDegradationPrior",
    "DeQAQualityPrior", "SAM2RegionPrior", "DACLIPDegradationPrior",
    "MaskAveragePool", "QualityAdapter", "QualityGuidance", "SemanticCrossAttention",
    "DegradationPromptGenerator", "DegradationAwareModule", "ClearAIRGuidance",
]
