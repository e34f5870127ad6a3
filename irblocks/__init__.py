"""irblocks: a PyTorch component library for all-in-one image restoration.

Three ways in:

* import blocks: ``from irblocks import MDTA, GDFN, TransformerBlock``;
* build whole models from YAML recipes: ``irblocks.create_model("restormer")``;
* microbenchmark the kernels (``pytest tests/benchmarks --benchmark-only``).

Everything built in registers when ``irblocks`` is imported (no other import
needed); third-party plug-ins register through the ``irblocks.plugins`` entry
point group, loaded lazily on the first lookup.
"""
from __future__ import annotations

__version__ = "0.1.0"

from irblocks import registry  # noqa: F401  (irblocks.registry)
from irblocks.aux import aux_losses, clear_aux_losses, record_aux_loss, total_aux_loss  # noqa: F401
from irblocks.errors import InputError  # noqa: F401
from irblocks.execution import set_execution  # noqa: F401
from irblocks.guidance import Guidance, GuidanceError, GuidedBlock  # noqa: F401

# --- blocks (each file registers its entries) ---
from irblocks.norm import ChannelLayerNorm  # noqa: F401
from irblocks.gdfn import GDFN  # noqa: F401
from irblocks.mdta import MDTA  # noqa: F401
from irblocks.transformer_block import TransformerBlock  # noqa: F401
from irblocks.sampling import Downsample, PatchEmbed, Upsample  # noqa: F401
from irblocks.prompt import PromptGenBlock, PromptInteraction  # noqa: F401
from irblocks.unet import UNetRestorer  # noqa: F401

# --- paper blocks (each subpackage's __init__ imports its files) ---
from irblocks.anyir import *  # noqa: F401,F403,E402
from irblocks.clusir import *  # noqa: F401,F403,E402
from irblocks.clearair import *  # noqa: F401,F403,E402

from irblocks import losses  # noqa: F401,E402  (registers the losses)
from irblocks import train  # noqa: F401,E402  (registers the degradations; trainer, metrics, datasets)
from irblocks import convert  # noqa: F401,E402  (registers the official-weight converters)
from irblocks.api import create_model, list_models, resolve_recipe, to_recipe  # noqa: E402,F401
from irblocks.checkpoint import load, save  # noqa: E402,F401
from irblocks.summary import summarize  # noqa: E402,F401
