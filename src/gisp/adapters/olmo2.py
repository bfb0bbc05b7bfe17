"""OLMo-2: the Llama layout, but ``q_norm`` / ``k_norm`` are RMS norms over the *whole* q and k
projections (all heads together), not per head.

Removing a head changes the norm's statistic for every other head of the layer: the model with a
head masked out and the model with that head sliced away compute different attention, so no
sliced export can equal the masked model gisp scored. Heads are therefore not pruned for this
family; MLP channels are (the budget comes from the MLPs alone), and those exports are exact.
"""

from __future__ import annotations

from gisp.adapters.base import register_adapter
from gisp.adapters.llama import LlamaLayout


@register_adapter
class Olmo2Adapter(LlamaLayout):
    model_types = ("olmo2",)
    prunable_heads = False
    heads_note = ("olmo2 normalises q and k over all heads together, so a removed head changes the others: "
                  "heads are kept and only MLP channels are pruned")
