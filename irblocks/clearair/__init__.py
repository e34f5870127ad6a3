"""ClearAIR (seed 003): guidance priors (quality, regions, degradation), their adapters
for the paper's pretrained models, and the guided blocks (QGM, mask average pooling,
pattern-token semantic cross-attention, degradation prompt + DAM, the QGM -> SCA -> DAM
unit). Importing this package registers everything."""
from .priors_common import GuidancePrior, PriorOutputError  # noqa: F401
from .priors_quality import NSSQualityPrior
from .priors_regions import KMeansRegionPrior
from .priors_degradation import ClassicalDegradationPrior
from .adapters import DeQAQualityPrior, SAM2RegionPrior, DACLIPDegradationPrior
from .mask_pool import MaskAveragePool
from .qgm import QualityAdapter, QualityGuidance
from .sca import SemanticCrossAttention
from .dam import DegradationAwareModule, DegradationPromptGenerator
from .guidance_block import ClearAIRGuidance

__all__ = [
    "NSSQualityPrior", "KMeansRegionPrior", "ClassicalDegradationPrior",
    "DeQAQualityPrior", "SAM2RegionPrior", "DACLIPDegradationPrior",
    "MaskAveragePool", "QualityAdapter", "QualityGuidance", "SemanticCrossAttention",
    "DegradationPromptGenerator", "DegradationAwareModule", "ClearAIRGuidance",
]
