"""Where a modification Δh can be attached in a stock transformers model.

A *site* is a place in the paper's Figure 1: the head attention of one attention module, the attention sublayer,
the FFN sublayer, or one projection matrix. Sites are found from the model's structure, not from a list of
architectures, so that every method finds them the same way and no model code is copied or forked:

* the layer stacks are the longest lists of layers that hold attention modules (the encoder's and the decoder's
  for encoder-decoder models);
* an attention module is a module with query, key and value projections (``q_proj``/``k_proj``/``v_proj``,
  ``query``/``key``/``value``, ``q``/``k``/``v``, ``q_lin``..., ``query_proj``...) or one fused projection
  (``c_attn``, ``qkv_proj``, ``Wqkv``, ``query_key_value``), and an output projection in it (``o_proj``,
  ``out_proj``, ``o``, ``out_lin``, ``c_proj``, ``Wo``, ``dense``) or beside it (BERT's ``output.dense``);
* the FFN is every other linear of the layer; where its output joins the residual stream, and through which
  modules, is read off one forward pass of the first layer of each stack (:func:`trace_structure`) on eight
  tokens, in training mode under ``torch.no_grad`` with the random state restored afterwards: the point where
  x + FFN(x) (after the block's dropout) appears is the residual sum, and whether x or a norm of x enters the
  FFN tells pre-norm from post-norm. A model whose weights are on the meta device (the book's parameter
  accounting builds the paper's models so) is traced through a stand-in of its class and config with two layers
  per stack and a small vocabulary.

What is found is kept as a :class:`Structure` of paths inside one layer, applied to every layer. A model whose
structure cannot be found this way can be described by hand in :data:`OVERRIDES` (model_type -> Structure).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.pytorch_utils import Conv1D

#: Names of the query, key and value projections inside an attention module, and of fused q/k/v projections.
Q_NAMES = ("q_proj", "q", "query", "q_lin", "query_proj", "Wq")
K_NAMES = ("k_proj", "k", "key", "k_lin", "key_proj", "Wk")
V_NAMES = ("v_proj", "v", "value", "v_lin", "value_proj", "Wv")
FUSED_NAMES = ("c_attn", "qkv_proj", "Wqkv", "query_key_value")
#: Names of the output projection inside the attention module, then beside it (relative to its parent).
O_NAMES = ("o_proj", "out_proj", "o", "out_lin", "c_proj", "Wo", "dense")
O_BESIDE = ("output.dense",)
#: Names of an absolute position embedding in the first stack (prompt tuning gives the prompt no position).
POSITION_NAMES = ("position_embeddings", "embed_positions", "wpe")
#: Config fields of the hidden dropout and of the attention-probability dropout, first present wins (none: 0).
HIDDEN_DROPOUT = ("hidden_dropout_prob", "dropout", "resid_pdrop", "dropout_rate", "mlp_dropout", "hidden_dropout")
ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", "dropout_rate")
TRACE_LENGTH = 8


# ---- a structure: paths inside one layer ------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionSpec:
    """One attention module of a layer. q, k, v: paths inside the module, or (fused path, 0 | 1 | 2) for a slice of
    one fused projection (q takes heads × head_dim columns, k and v kv_heads × head_dim each); o: path inside the
    layer."""

    kind: str  # 'encoder' | 'decoder' | 'cross'
    path: str
    q: str | tuple[str, int]
    k: str | tuple[str, int]
    v: str | tuple[str, int]
    o: str


@dataclass(frozen=True)
class FFNSpec:
    """The FFN sublayer of a layer, as paths inside the layer ('' is the layer itself); see FFNSite."""

    residual: str
    last: str
    linears: tuple[str, ...]
    sum_at: tuple[str, str]  # ('input' | 'output', path)
    output: str | None = None


@dataclass(frozen=True)
class StackSpec:
    kind: str  # 'encoder' | 'decoder'
    layers: str  # path of the layer list inside model.base_model
    attentions: tuple[AttentionSpec, ...]
    ffn: FFNSpec


Structure = tuple[StackSpec, ...]

#: model_type -> Structure, for models whose structure the tracer cannot find. Empty: every architecture petl is
#: tested on is found from its structure (tests/test_coverage.py).
OVERRIDES: dict[str, Structure] = {}
_FOUND: dict[tuple, Structure] = {}  # (model class, config as JSON) -> its Structure, found once
_OF_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its Structure


# ---- sites: the modules of every layer ---------------------------------------------------------------------------

@dataclass
class Projection:
    """One projection matrix: an nn.Linear or Conv1D, or the columns [start, start + width) of a fused one."""

    module: nn.Module
    start: int | None = None  # where the slice begins in the fused projection's output; None: the whole output
    width: int | None = None

    @property
    def is_slice(self) -> bool:
        return self.start is not None


@dataclass
class AttentionSite:
    """One attention module: the head-attention site, its projections and its sublayer."""

    name: str
    kind: str  # 'encoder' | 'decoder' | 'cross' : the paper's three attention types, one prefix group each
    layer: int
    module: nn.Module
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden: int
    dropout: float  # the model's attention-probability dropout (the reference's adapters at attention use it)


@dataclass
class FFNSite:
    """One FFN sublayer and the points around it where a Δh can be read or added.

    residual: the module whose input is the residual stream x entering the FFN block (the FFN's input in post-norm
        layers, the pre-FFN LayerNorm's input in pre-norm ones): the parallel adapter reads x here.
    last: the FFN's last linear (its output is FFN(x) before the block's dropout).
    output: the module whose output is FFN(x) after the block's dropout, or None where that dropout is functional
        (BART, mBART, Marian); the sequential adapter reads and changes that output, as the reference does.
    sum_at: ('input', module) if the residual sum y = x + dropout(FFN(x)) is that module's input (a post-norm
        LayerNorm), ('output', module) if it is that module's output (a pre-norm layer).
    """

    name: str
    kind: str  # 'encoder' | 'decoder'
    layer: int
    layer_module: nn.Module
    residual: nn.Module
    last: nn.Module
    output: nn.Module | None
    sum_at: tuple[str, nn.Module]
    linears: list[nn.Module]
    hidden: int
    dropout: float  # the model's hidden dropout, applied to FFN(x) and inside the reference's FFN adapters


@dataclass
class Sites:
    architecture: str
    attention: list[AttentionSite] = field(default_factory=list)
    ffn: list[FFNSite] = field(default_factory=list)


class UnsupportedStructure(ValueError):
    """The model's structure lacks something petl's sites need; the message says what was not found."""


def find_sites(model: nn.Module) -> Sites:
    """All sites of a stock model, from its structure (found once per model, then kept)."""
    config = model.config
    structure = structure_of(model)
    base = model.base_model
    sites = Sites(architecture=getattr(config, "model_type", type(model).__name__))
    hidden_dropout, attention_dropout = _dropout(config, HIDDEN_DROPOUT), _dropout(config, ATTENTION_DROPOUT)
    for stack in structure:
        for index, layer in enumerate(_get(base, stack.layers)):
            prefix = f"{stack.layers}.{index}"
            try:
                for spec in stack.attentions:
                    sites.attention.append(_attention_site(config, layer, spec, f"{prefix}.{spec.path}", index,
                                                           attention_dropout))
                ffn = stack.ffn
                where, path = ffn.sum_at
                last = _get(layer, ffn.last)
                sites.ffn.append(FFNSite(
                    name=f"{prefix}.ffn", kind=stack.kind, layer=index, layer_module=layer,
                    residual=_get(layer, ffn.residual), last=last,
                    output=_get(layer, ffn.output) if ffn.output is not None else None,
                    sum_at=(where, _get(layer, path)), linears=[_get(layer, p) for p in ffn.linears],
                    hidden=_shape(last)[1], dropout=hidden_dropout))
            except (AttributeError, IndexError) as error:
                raise UnsupportedStructure(f"layer {prefix} ({type(layer).__name__}) lacks a module the first layer "
                                           f"of its stack has: {error}") from None
    return sites


def structure_of(model: nn.Module) -> Structure:
    """The model's Structure: OVERRIDES[model_type] if there is one, else found by tracing its first layers."""
    override = OVERRIDES.get(getattr(model.config, "model_type", None))
    if override is not None:
        return override
    structure = _OF_MODEL.get(model)  # kept per model: later config changes (BERT's problem_type) or attached
    if structure is None:              # methods never lead to a second trace of it
        # The same class built from the same config has the same modules at the same paths: trace it once.
        key = (type(model), model.config.to_json_string())
        structure = _FOUND.get(key)
        if structure is None:
            weightless = model.get_input_embeddings().weight.device.type == "meta"  # no values: a small stand-in
            structure = _FOUND[key] = trace_structure(_stand_in(model) if weightless else model)
        _OF_MODEL[model] = structure
    return structure


#: How many layers of each stack (and how large a vocabulary) the stand-in of a weightless model has.
STAND_IN_LAYERS = 2
STAND_IN_VOCAB = 128
_LAYER_COUNTS = ("num_hidden_layers", "encoder_layers", "decoder_layers", "num_layers", "num_decoder_layers",
                 "n_layer", "n_layers")


def _stand_in(model: nn.Module) -> nn.Module:
    """A model of the same class and config on the CPU with random weights, but STAND_IN_LAYERS layers per stack and
    a small vocabulary: the same modules at the same paths, for a model whose weights are on the meta device."""
    config = copy.deepcopy(model.config)
    for name in _LAYER_COUNTS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > STAND_IN_LAYERS:
            setattr(config, name, STAND_IN_LAYERS)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:STAND_IN_LAYERS]
    special = [v for k, v in config.to_dict().items() if k.endswith("_token_id") and isinstance(v, int)]
    config.vocab_size = min(config.vocab_size, max([STAND_IN_VOCAB - 1, *special]) + 1)
    with torch.device("cpu"):
        return type(model)(config).to(model.get_input_embeddings().weight.dtype)


def position_embedding(model: nn.Module) -> nn.Module | None:
    """The module that adds absolute positions to the (first stack's) input, or None for relative positions."""
    stack = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model.base_model
    layers = {id(m) for spec in structure_of(model) for m in _get(model.base_model, spec.layers).modules()}
    for name, module in stack.named_modules():
        if name.rsplit(".", 1)[-1] in POSITION_NAMES and id(module) not in layers:
            return module
    return None


# ---- finding the structure --------------------------------------------------------------------------------------

def trace_structure(model: nn.Module) -> Structure:
    """Find the layer stacks, attention modules and FFN of `model` (see the module's docstring)."""
    config = model.config
    base = model.base_model
    paths = {id(m): name for name, m in base.named_modules()}
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    stacks = [("encoder", model.get_encoder()), ("decoder", model.get_decoder())] if encoder_decoder \
        else [(None, base)]
    structure = []
    for kind, stack in stacks:
        layers = _layer_list(stack)
        if layers is None:
            raise UnsupportedStructure(
                f"{type(model).__name__}: found no list of layers with attention modules in {type(stack).__name__} "
                f"(an attention module has query, key and value projections named {'/'.join(Q_NAMES)}, ... or a "
                f"fused {'/'.join(FUSED_NAMES)}, and an output projection {'/'.join(O_NAMES + O_BESIDE)}); "
                "describe it in petl.sites.OVERRIDES")
        layer = layers[0]
        decoder = encoder_decoder and kind == "decoder"
        events = _trace_first_layer(model, stack, layer, decoder, training=False)
        dropped = _trace_first_layer(model, stack, layer, decoder, training=True)
        attentions = _attention_specs(layer, events, kind, encoder_decoder)
        stack_kind = kind or attentions[0].kind
        structure.append(StackSpec(kind=stack_kind, layers=paths[id(layers)], attentions=attentions,
                                   ffn=_ffn_spec(layer, attentions, events, dropped)))
    return tuple(structure)


def _layer_list(stack: nn.Module) -> nn.ModuleList | None:
    """The longest ModuleList in `stack` whose every item holds an attention module."""
    lists = [m for m in stack.modules() if isinstance(m, nn.ModuleList) and len(m)
             and all(_attention_modules(item) for item in m)]
    return max(lists, key=len, default=None)


def _attention_modules(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every module of the layer with q/k/v projections (or a fused one), in their order."""
    found = []
    for path, module in layer.named_modules():
        children = dict(module.named_children())
        if (any(n in children for n in Q_NAMES) and any(n in children for n in K_NAMES)
                and any(n in children for n in V_NAMES)) or any(n in children for n in FUSED_NAMES):
            if not any(path.startswith(p + ".") for p, _ in found):
                found.append((path, module))
    return found


@dataclass
class _Event:
    """One module's forward pass in the trace: when it began and ended, its first input and its output."""

    name: str
    module: nn.Module
    start: int
    end: int = -1
    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


class _StopTrace(Exception):
    pass


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def _trace_first_layer(model: nn.Module, stack: nn.Module, layer: nn.Module, decoder: bool,
                       training: bool) -> dict[str, _Event]:
    """Run the model on TRACE_LENGTH tokens up to the end of `layer` (the first layer of `stack`), recording every
    submodule of the layer, in training or evaluation mode; no gradients, the random state and every module's mode
    restored afterwards."""
    events: dict[str, _Event] = {}
    clock = iter(range(1 << 30))
    handles = []

    def recorder(name):
        def before(module, args, kwargs):
            first = _first_tensor(args)
            if first is None:
                states = kwargs.get("hidden_states")
                first = states if isinstance(states, torch.Tensor) else _first_tensor(kwargs)
            events[name] = _Event(name, module, start=next(clock), input=first)

        def after(module, args, kwargs, output):
            event = events[name]
            event.end, event.output = next(clock), _first_tensor(output)
        return before, after

    def stop(*_):
        raise _StopTrace

    embeddings = model.get_input_embeddings()
    weight = embeddings.weight
    vocab = weight.shape[0]
    ids = (torch.arange(TRACE_LENGTH, device=weight.device) * 7 + 5).remainder(vocab).unsqueeze(0)
    config = model.config
    modes = {m: m.training for m in model.modules()}
    devices = [weight.device.index or 0] if weight.device.type == "cuda" else []
    try:
        for name, module in layer.named_modules():
            before, after = recorder(name)
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after, with_kwargs=True))
        handles.append(layer.register_forward_hook(stop))
        model.train(training)
        with torch.no_grad(), torch.random.fork_rng(devices=devices), contextlib.suppress(_StopTrace):
            torch.manual_seed(0)
            if decoder:
                width = getattr(config, "d_model", None) or config.hidden_size
                states = torch.randn(1, TRACE_LENGTH, width, device=weight.device, dtype=weight.dtype)
                model.base_model(input_ids=ids, decoder_input_ids=ids, encoder_outputs=BaseModelOutput(states),
                                 use_cache=False)
            else:
                takes_cache = "use_cache" in inspect.signature(stack.forward).parameters
                stack(input_ids=ids, **({"use_cache": False} if takes_cache else {}))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    if "" not in events or events[""].end < 0:
        raise UnsupportedStructure(f"running {type(model).__name__} did not reach its first {type(layer).__name__}")
    return events


def _child(module: nn.Module, names) -> str | None:
    children = dict(module.named_children())
    return next((n for n in names if n in children), None)


def _attention_specs(layer: nn.Module, events: dict[str, _Event], stack_kind: str | None,
                     encoder_decoder: bool) -> tuple[AttentionSpec, ...]:
    specs = []
    for path, module in _attention_modules(layer):
        fused = _child(module, FUSED_NAMES)
        if fused is not None:
            q, k, v = (fused, 0), (fused, 1), (fused, 2)
        else:
            q, k, v = (_child(module, names) for names in (Q_NAMES, K_NAMES, V_NAMES))
        o = _child(module, O_NAMES)
        if o is not None:
            o_path = f"{path}.{o}"
        else:
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            beside = next((p for p in O_BESIDE if _has(layer, f"{parent}.{p}".removeprefix("."))), None)
            if beside is None:
                raise UnsupportedStructure(
                    f"{type(module).__name__} ({path}) has query/key/value projections but no output projection "
                    f"(looked for {'/'.join(O_NAMES)} in it and {'/'.join(O_BESIDE)} beside it)")
            o_path = f"{parent}.{beside}".removeprefix(".")
        if stack_kind == "decoder" and encoder_decoder and not _self_attention(path, q, k, events):
            kind = "cross"
        elif stack_kind is not None:
            kind = stack_kind
        else:
            causal = getattr(module, "is_causal", None)
            kind = "decoder" if (causal if causal is not None else getattr(layer, "is_decoder", False)) else "encoder"
        specs.append(AttentionSpec(kind=kind, path=path, q=q, k=k, v=v, o=o_path))
    return tuple(specs)


def _self_attention(path: str, q, k, events: dict[str, _Event]) -> bool:
    """Whether the attention module's keys are computed from the same states as its queries."""
    if isinstance(q, tuple):
        return True
    query, key = events.get(f"{path}.{q}"), events.get(f"{path}.{k}")
    if query is None or key is None or query.input is None or key.input is None:
        return True
    return query.input.shape == key.input.shape and torch.equal(query.input, key.input)


def _has(root: nn.Module, path: str) -> bool:
    try:
        _get(root, path)
    except (AttributeError, IndexError):
        return False
    return True


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    return torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def _ffn_spec(layer: nn.Module, attentions: tuple[AttentionSpec, ...], events: dict[str, _Event],
              dropped: dict[str, _Event]) -> FFNSpec:
    """The FFN: the layer's linears outside its attention modules, and where its output joins the residual.

    `events` is the trace in evaluation mode, where FFN(x) after the block's dropout is FFN(x): there, the residual
    sum is the first point whose value is x + FFN(x). `dropped` is the trace in training mode: the module whose
    output is FFN(x) after the dropout is the last one whose output still completes the sum there (none where the
    dropout is a function call, as in BART)."""
    owned = {a.o for a in attentions} | {a.path for a in attentions}
    linears = sorted((e for name, e in events.items() if e.end >= 0 and _is_linear(e.module)
                      and not any(name == p or name.startswith(p + ".") for p in owned)), key=lambda e: e.start)
    kind = type(layer).__name__
    if not linears:
        raise UnsupportedStructure(f"{kind} has no FFN: no linear ran outside its attention modules")
    first, last = linears[0], max(linears, key=lambda e: e.end)
    entering = first.input
    # x: the residual stream entering the FFN block; it enters the FFN itself (post-norm) or through a norm.
    sources = [first] + [e for e in events.values() if e.start < first.start and e.end >= 0
                         and _close(e.output, entering) and not _close(e.input, entering)]
    after = [e for e in events.values() if e.end >= last.end]  # modules whose output may be FFN(x), dropped
    sums = sorted([(e.start, "input", e) for e in events.values() if e.start > last.end]
                  + [(e.end, "output", e) for e in events.values() if e.end > last.end], key=lambda t: t[0])
    for source in sources:
        x = source.input
        if x is None:
            continue
        for _, where, point in sums:
            total = point.input if where == "input" else point.output
            branches = [e for e in after if e.end <= (point.start if where == "input" else point.end)
                        and e is not point and _is_sum(total, x, e.output)]
            if not branches:
                continue
            moving = [e for e in branches if not _is_linear(e.module)]
            output = max(moving, key=lambda e: e.end).name if moving else None
            residual = min((e for e in events.values() if e.start <= first.start and _close(e.input, x)
                            and not _contains(e.name, point.name)),
                           key=lambda e: e.start, default=None)
            if residual is None:
                break
            return FFNSpec(residual=residual.name, last=last.name,
                           linears=tuple(e.name for e in linears), sum_at=(where, point.name), output=output)
    raise UnsupportedStructure(
        f"{kind}: found the FFN ({', '.join(e.name for e in linears)}) but not where its output joins the residual "
        f"stream (no module's input or output was x + FFN(x)); describe it in petl.sites.OVERRIDES")


def _dropped_branch(branches: list[_Event], source: _Event, where: str, point: _Event,
                    dropped: dict[str, _Event]) -> str | None:
    """The last module (not a linear) whose output is FFN(x) after the block's dropout, from the training trace
    (x: the input of `source`)."""
    x_dropped = dropped[source.name].input if source.name in dropped else None
    total = dropped[point.name].input if where == "input" else dropped[point.name].output
    keep = [e for e in branches if not _is_linear(e.module) and e.name in dropped and x_dropped is not None
            and _is_sum(total, x_dropped, dropped[e.name].output)]
    return max(keep, key=lambda e: e.end).name if keep else None


def _is_sum(total: torch.Tensor | None, x: torch.Tensor, branch: torch.Tensor | None) -> bool:
    """Whether `total` is x + branch."""
    return branch is not None and branch.shape == x.shape and _close(total, x + branch)


def _contains(outer: str, inner: str) -> bool:
    """Whether the module at path `outer` contains (or is) the one at `inner` ('' is the layer)."""
    return outer == "" or inner == outer or inner.startswith(outer + ".")


# ---- helpers ----------------------------------------------------------------------------------------------------

def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in filter(None, path.split(".")):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (whose weight is stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def _attention_site(config, layer: nn.Module, spec: AttentionSpec, name: str, index: int,
                    dropout: float) -> AttentionSite:
    attn = _get(layer, spec.path)
    o = _get(layer, spec.o)
    hidden = _shape(o)[1]
    heads, kv_heads, head_dim = _head_shape(config, attn, hidden)
    widths = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)

    def projection(part) -> Projection:
        if not isinstance(part, tuple):
            return Projection(_get(attn, part))
        fused, index_ = part
        module = _get(attn, fused)
        if _shape(module)[1] != sum(widths):
            raise UnsupportedStructure(f"{name}.{fused} has {_shape(module)[1]} outputs, not q, k, v of "
                                       f"{widths[0]} + {widths[1]} + {widths[2]} ({heads} heads, {kv_heads} "
                                       f"key/value heads of {head_dim})")
        return Projection(module, start=sum(widths[:index_]), width=widths[index_])

    return AttentionSite(name=name, kind=spec.kind, layer=index, module=attn, q=projection(spec.q),
                         k=projection(spec.k), v=projection(spec.v), o=Projection(o), num_heads=heads,
                         num_kv_heads=kv_heads, head_dim=head_dim, hidden=hidden, dropout=dropout)


def _dropout(config, names) -> float:
    name = next((n for n in names if hasattr(config, n)), None)
    return float(getattr(config, name) or 0.0) if name else 0.0


def _head_shape(config, attn: nn.Module, hidden: int) -> tuple[int, int, int]:
    heads = (getattr(attn, "num_heads", None) or getattr(attn, "num_attention_heads", None)
             or getattr(attn, "n_heads", None) or config.num_attention_heads)
    head_dim = (getattr(attn, "head_dim", None) or getattr(attn, "attention_head_size", None)
                or getattr(attn, "key_value_proj_dim", None) or getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, head_dim
