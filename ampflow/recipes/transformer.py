"""A BERT-style encoder classifier that declares how it splits: the tensor-parallel plan and the pipeline stages.

Shared by ``tweets-minilm`` (the pretrained MiniLM-L6 encoder) and any recipe that builds a
``transformers`` BERT encoder (the tests' tiny randomly initialised one). The model's forward is the
composition the pipeline cuts, ``last(layers[-1](... layers[0](first(inputs))))``, so one process and a
pipeline of stages run the very same operations.

Tensor-parallel plan (Megatron-LM, Shoeybi et al. 2019, section 3): in each layer the query, key and
value projections and the MLP's first projection split column-wise (each rank owns whole attention
heads and a slice of the MLP's hidden units), the attention output and the MLP's second projection
split row-wise, so each of the two sub-blocks ends in one all-reduce. Embeddings, norms and the head
stay replicated.

Sequence parallelism (``sequence_parallel=true``; Korthikanti et al. 2022) adds the plan of
:func:`sequence_parallel_plan`: inside each layer the dropout, residual add and LayerNorm after the
attention and after the MLP run on this rank's slice of the sequence (``SequenceParallel``), the
row-split projections reduce-scatter over the sequence instead of all-reducing, and the all-gathers
before the query/key/value and MLP projections (``PrepareModuleInput``) give back the whole sequence.
BERT is post-LN, its norms sit inside the HF modules after the residual add, and the pipeline state
carries the mask beside the hidden states, so the sequence is sliced at each layer's input and gathered
at its output (``PrepareModuleInputOutput``): the residual stream between layers stays whole, which
costs one all-gather per layer each way more than Megatron-LM's form (that keeps it sliced). The
embeddings and the head stay replicated; loss parallelism does not apply (the head's few classes are
not split). Dropout masks repeat across the tensor group's sequence slices (the ranks of a group draw
from one seed), as attention dropout already repeats across head shards under plain ``tp``.

Pipeline split: ``first`` (embeddings, inputs -> state), the encoder layers (state -> state) and
``last`` (mean pooling + head, state -> logits). The state is one tensor ``(batch, seq, hidden + 1)``:
the hidden states with the attention mask as a last channel, because a pipeline stage passes tensors
only and every layer needs the mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ampflow.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# module-name patterns (``*`` matches one dotted segment) relative to the classifier, and their split
_LAYER = "encoder.encoder.layer.*."
TP_PLAN: dict[str, str] = {
    _LAYER + "attention.self.query": "colwise",
    _LAYER + "attention.self.key": "colwise",
    _LAYER + "attention.self.value": "colwise",
    _LAYER + "attention.output.dense": "rowwise",
    _LAYER + "intermediate.dense": "colwise",
    _LAYER + "output.dense": "rowwise",
}


def tp_plan(model: Any, tp: int, sequence_parallel: bool = False) -> dict[str, Any]:
    """The plan of :data:`TP_PLAN` for a tensor-parallel degree ``tp``, with
    :func:`sequence_parallel_plan` over it when ``sequence_parallel``.

    Raises ConfigError when ``tp`` does not divide the attention heads or the MLP width (each rank
    must hold whole heads).
    """
    cfg = model.encoder.config
    heads, inner = int(cfg.num_attention_heads), int(cfg.intermediate_size)
    if heads % tp or inner % tp:
        raise ConfigError(
            f"mesh tp:{tp} must divide the encoder's {heads} attention heads and MLP width {inner}"
        )
    plan: dict[str, Any] = dict(TP_PLAN)
    if sequence_parallel:
        plan.update(sequence_parallel_plan())
    return plan


def sequence_parallel_plan() -> dict[str, Any]:
    """The sequence-parallel entries of a BERT layer: torch ``ParallelStyle`` objects by module pattern.

    The sequence is dimension 1 of ``(batch, seq, hidden)``; every tensor between the slicing at the
    layer's input and the gathering at its output is a DTensor, so a sequence length the tensor-parallel
    degree does not divide is sliced unevenly and still gathered right.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        PrepareModuleInput,
        PrepareModuleInputOutput,
        RowwiseParallel,
        SequenceParallel,
    )

    seq, whole = Shard(1), Replicate()
    layer = _LAYER[:-1]
    return {
        # the layer's (hidden, mask): hidden sliced over the sequence in, gathered whole out
        layer: PrepareModuleInputOutput(
            input_layouts=(whole, None),
            desired_input_layouts=(seq, None),
            output_layouts=seq,
            desired_output_layouts=whole,
        ),
        # attention and the MLP's first projection see the whole sequence (all-gather)
        _LAYER + "attention.self": PrepareModuleInput(
            input_layouts=(seq,), desired_input_layouts=(whole,), use_local_output=True
        ),
        _LAYER + "intermediate": PrepareModuleInput(
            input_layouts=(seq,), desired_input_layouts=(whole,), use_local_output=True
        ),
        # the row splits reduce-scatter over the sequence; dropout, residual and LayerNorm on a slice
        _LAYER + "attention.output.dense": RowwiseParallel(output_layouts=seq, use_local_output=False),
        _LAYER + "attention.output.LayerNorm": SequenceParallel(),
        _LAYER + "output.dense": RowwiseParallel(output_layouts=seq, use_local_output=False),
        _LAYER + "output.LayerNorm": SequenceParallel(),
    }


def fsdp_units(model: Any) -> list[Any]:
    """The modules FSDP2 shards as units of a :func:`classifier` model: its encoder's layers (one
    all-gather each, torchtitan's per-block sharding); the root keeps the embeddings and the head."""
    return list(model.encoder.encoder.layer)


def pipeline_split(model: Any) -> tuple[Any, list[Any], Any]:
    """``(first, layers, last)`` of a :func:`classifier` model, the parts a pipeline stage takes.

    Each part is a parameter-free module view whose ``owns`` lists the names of the model's
    submodules it computes with (so a stage can drop every other part's weights).
    """
    return model.first, list(model.layers), model.last


def classifier(encoder: Any, num_classes: int, dropout: float = 0.1) -> torch.nn.Module:
    """A mean-pooled classification head on a ``transformers`` BERT encoder (``BertModel``).

    ``forward(input_ids, attention_mask)`` with ``(batch, seq)`` int tensors returns logits
    ``(batch, num_classes)``; padding (mask 0) is left out of the mean (sentence-transformers' pooling).
    Parameter names are the encoder's under ``encoder.`` and the head's under ``head.``, as before this
    module existed, so older checkpoints load.
    """
    from torch import nn
    from transformers.masking_utils import create_bidirectional_mask

    def split_state(state: Any) -> tuple[Any, Any]:
        return state[..., :-1], state[..., -1]

    class First(nn.Module):
        """Embeddings; the mask rides along as the state's last channel."""

        def __init__(self, owner: nn.Module) -> None:
            super().__init__()
            self._owner = [owner]  # a list: not registered again as a submodule
            self.owns = ["encoder.embeddings"]

        def forward(self, input_ids: Any, attention_mask: Any, **_: Any) -> Any:
            hidden = self._owner[0].encoder.embeddings(input_ids=input_ids)
            return torch_cat(hidden, attention_mask)

    class Layer(nn.Module):
        """One encoder layer on the state (the mask rebuilt as the encoder's attention wants it)."""

        def __init__(self, owner: nn.Module, index: int) -> None:
            super().__init__()
            self._owner, self.index = [owner], index
            self.owns = [f"encoder.encoder.layer.{index}"]

        def forward(self, state: Any) -> Any:
            hidden, mask = split_state(state)
            enc = self._owner[0].encoder
            attn = create_bidirectional_mask(
                config=enc.config, inputs_embeds=hidden, attention_mask=mask.round().long()
            )
            out = enc.encoder.layer[self.index](hidden, attn)
            out = out[0] if isinstance(out, tuple) else out
            return torch_cat(out, mask)

    class Last(nn.Module):
        """Mean over real tokens, dropout, linear head."""

        def __init__(self, owner: nn.Module) -> None:
            super().__init__()
            self._owner = [owner]
            self.owns = ["head", "dropout"]

        def forward(self, state: Any) -> Any:
            hidden, mask = split_state(state)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
            owner = self._owner[0]
            return owner.head(owner.dropout(pooled))

    class MeanPooledClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # BERT's pooler (dense + tanh on the first token) never reaches the loss of a mean-pooled
            # head: its weights would get no gradient, which DDP refuses ("Expected to have finished
            # reduction in the prior iteration") and FSDP shards for nothing
            encoder.pooler = None
            self.encoder = encoder
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(int(encoder.config.hidden_size), num_classes)
            self.register_load_state_dict_pre_hook(_drop_pooler)
            # parameter-free views of the parts above (they hold no weights of their own)
            self.__dict__["first"] = First(self)
            self.__dict__["layers"] = [Layer(self, i) for i in range(len(encoder.encoder.layer))]
            self.__dict__["last"] = Last(self)

        def forward(self, input_ids: Any, attention_mask: Any, **_: Any) -> Any:
            state = self.first(input_ids=input_ids, attention_mask=attention_mask)
            for layer in self.layers:
                state = layer(state)
            return self.last(state)

    return MeanPooledClassifier()


def _drop_pooler(module: Any, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Checkpoints written while the classifier still carried BERT's (unused) pooler load as before."""
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.pooler.")]:
        del state_dict[key]


def torch_cat(hidden: Any, mask: Any) -> Any:
    """``hidden (b, s, h)`` with ``mask (b, s)`` appended as channel ``h``: ``(b, s, h + 1)``."""
    import torch

    return torch.cat([hidden, mask.unsqueeze(-1).to(hidden.dtype)], dim=-1)


def tiny_bert(
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seq_len: int = 16,
    dropout: float = 0.0,
) -> Any:
    """A randomly initialised BERT encoder (no download): the tests' and benchmarks' tiny transformer."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=seq_len,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertModel(cfg, add_pooling_layer=False)
