"""ClusIR blocks (arXiv 2512.10948; no public code -- built from the paper).

Files: haar (DWT/IDWT pair), wavelet_block (Wave-ViT attention/FFN/block),
prototypes (prototype bank), router (PCGRM), moe (routed MoE block),
prompt_fusion (multi-scale prompt fusion), fsb (frequency self-mining),
dafmm (frequency modulation), diagnostics (routing and affinity maps).
"""
from irblocks.clusir.dafmm import DAFMM
from irblocks.clusir.diagnostics import prototype_affinity_maps, routing_diagnostics
from irblocks.clusir.fsb import FrequencySelfMining
from irblocks.clusir.haar import DWT, IDWT
from irblocks.clusir.moe import ClusterMoE
from irblocks.clusir.prompt_fusion import PromptFusion
from irblocks.clusir.prototypes import PrototypeBank
from irblocks.clusir.router import PCGRMRouter, Routing
from irblocks.clusir.wavelet_block import WaveAttention, WaveFFN, WaveletBlock

__all__ = ["DWT", "IDWT", "WaveAttention", "WaveFFN", "WaveletBlock", "PrototypeBank",
           "PCGRMRouter", "Routing", "ClusterMoE", "FrequencySelfMining", "DAFMM", "PromptFusion",
           "routing_diagnostics", "prototype_affinity_maps"]
