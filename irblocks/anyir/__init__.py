"""AnyIR blocks (Ren et al., "AnyIR: Any Image Restoration via Efficient Spatial-Frequency
Degradation Adaptation"; released code Amazingren/AnyIR): skip-split, Gated Degradation
Adaptation, spatial-frequency fusion, the Degradation Adaptation Block, and the converter
from the released weights."""
from .dab import DegradationAdaptation, degradation_adaptation_block
from .gated_da import GatedDegradationAdaptation, GatedDegradationAdaption
from .sf_fusion import SpatialFrequencyFusion
from .skip_split import SkipSplit, skip_merge, skip_split

try:  # the converter core (irblocks.convert) may be absent in a partial checkout
    from . import convert as _convert  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = ["SkipSplit", "skip_split", "skip_merge", "GatedDegradationAdaptation",
           "GatedDegradationAdaption", "SpatialFrequencyFusion", "DegradationAdaptation",
           "degradation_adaptation_block"]
