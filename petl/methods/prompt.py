"""Prompt tuning (Lester et al., 2021): l trainable vectors prepended to the input embeddings.

In the unified view the change sits at the model's input rather than at one layer: every layer then attends to
the prompt, as a prefix whose keys and values are computed by the frozen network (Section 2.1 of the paper).
For encoder-decoder models the prompt is prepended to the encoder input, and the decoder's cross-attention sees
it; for encoder-only and decoder-only models the prompt positions are removed again from the returned hidden
states, so that task heads and language-model labels line up with the inputs.

As in the reference implementation, the prompt takes no position: where the model adds learned or sinusoidal
absolute position embeddings (BART, mBART, Marian, BERT, RoBERTa, GPT-2), the tokens keep positions 0..n-1 and the
prompt vectors get none (the model's embedding LayerNorm and dropout then apply to both, and the prompt is not
multiplied by the embedding scale). Models with relative positions (T5's bias, Llama's rotary embedding) see the
prompt at positions 0..l-1 before the tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from petl.methods.base import Delta, parameter_dtype
from petl.sites import position_embedding


class PromptTuning(Delta):
    """P (l × d) prepended to the input embeddings of the model's first stack."""

    def __init__(self, model: nn.Module, length: int, method_dtype: str = "auto") -> None:
        super().__init__()
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        stack = model.get_encoder() if self.is_encoder_decoder else model.base_model
        decoder = model.get_decoder() if self.is_encoder_decoder else None
        embedding = getattr(stack, "embed_tokens", None) or stack.get_input_embeddings()
        # a list keeps stock modules out of this module
        self.stack_modules = [stack, decoder, embedding, position_embedding(model)]
        self.length = length
        # Lester et al.'s initialisation: embeddings of tokens drawn from the vocabulary.
        with torch.no_grad():
            tokens = torch.randint(0, embedding.weight.shape[0], (length,), device=embedding.weight.device)
            init = embedding(tokens) if embedding.weight.device.type != "meta" else embedding.weight[:length]
        dtype = parameter_dtype(method_dtype, embedding.weight.dtype)
        self.prompt = nn.Parameter(init.detach().to(dtype, copy=True))

    def attach(self) -> None:
        stack, decoder, embedding, positions = self.stack_modules
        self._handles.append(stack.register_forward_pre_hook(self._prepend, with_kwargs=True))
        if positions is not None:
            self._handles.append(positions.register_forward_pre_hook(self._token_positions))
            self._handles.append(positions.register_forward_hook(self._no_prompt_position))
        if self.is_encoder_decoder:
            self._handles.append(decoder.register_forward_pre_hook(self._extend_cross_mask, with_kwargs=True))
        else:
            self._handles.append(stack.register_forward_hook(self._strip))

    def _prepend(self, _module, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        input_ids = args.pop(0) if args else kwargs.pop("input_ids", None)
        embeds = kwargs.pop("inputs_embeds", None)
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            raise NotImplementedError(
                "prompt tuning on a decoder-only model recomputes the prompt at every step: call "
                "generate(..., use_cache=False), or use prefix tuning, which works with the cache")
        if embeds is None:
            embeds = self.stack_modules[2](input_ids)
        batch = embeds.shape[0]
        prompt = self.prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        kwargs["input_ids"] = None
        mask = kwargs.get("attention_mask")
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, self.length), mask], dim=1)
        for name in ("token_type_ids", "position_ids"):
            if kwargs.get(name) is not None:
                kwargs[name] = None  # defaults (type 0, positions 0..n) cover the lengthened input
        return tuple(args), kwargs

    def _token_positions(self, _module, args):
        """The position module sees only the tokens (its input is the position ids, or a tensor or size that gives
        the sequence length): positions 0..n-1."""
        first = args[0]
        if isinstance(first, torch.Tensor):
            return (first[..., : first.shape[-1] - self.length], *args[1:])
        return ((*first[:-1], first[-1] - self.length), *args[1:])

    def _no_prompt_position(self, _module, _args, output):
        """A zero position vector for each prompt vector, in front of the tokens' positions."""
        return torch.nn.functional.pad(output, [0, 0, self.length, 0])  # [..., l + n, d]

    def _strip(self, _module, _args, output):
        output.last_hidden_state = output.last_hidden_state[:, self.length:]
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(h[:, self.length:] for h in output.hidden_states)
        return output

    def _extend_cross_mask(self, _module, args, kwargs):
        mask, states = kwargs.get("encoder_attention_mask"), kwargs.get("encoder_hidden_states")
        if mask is not None and states is not None and mask.shape[-1] == states.shape[1] - self.length:
            kwargs = dict(kwargs)
            kwargs["encoder_attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], self.length), mask], dim=-1)
            return args, kwargs
        return None

    def paper_count(self) -> int:
        return self.prompt.numel()


def build(model: nn.Module, config) -> dict[str, Delta]:
    if config.attn_mode != "prompt_tuning":
        return {}
    return {"prompt": PromptTuning(model, config.attn_bn, config.method_dtype)}
