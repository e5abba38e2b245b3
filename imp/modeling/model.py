"""The IMP model: modality embedders -> one shared encoder -> task heads (seed 004 §3.3).

Each modality of an example is encoded on its own by the same encoder; a classification task
reads its dataset's linear head on the pooled tokens, a contrastive task projects each modality
into the space it shares with each other modality and divides similarities by a learned
temperature (`contrastive_head`, `temperature`). With a query `decoder` (UniT, seed 002), the
tasks in `decoded` send their own queries through it, over the encoded tokens of all their
inputs, to a detection head or a classifier (`ImpModel.decode`). With a `text_decoder` (the LiT
decoder, seed 003), the tasks that generate text read the encoded tokens of their inputs through
it (`ImpModel.text_logits` in training, `ImpModel.memory` and `ImpModel.text_step` in
`imp.generation`); with `frozen_encoder`, no gradient reaches the encoder through it.
"""

import functools
import itertools
import math

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from imp import validation
from imp.decoding import START
from imp.errors import ImpError, did_you_mean
from imp.modeling import embedders
from imp.modeling.decoder import (
    DecodedClassifier,
    DetectionHead,
    QueryDecoder,
    QueryEmbeddings,
    grid_positions,
)
from imp.modeling.embedders import (
    POSITIONS,
    ClassToken,
    SpectrogramEmbedder,
    TextEmbedder,
    VisionEmbedder,
    WaveformEmbedder,
    drop_tokens,
)
from imp.modeling.encoder import ATTENTIONS, REMAT_POLICIES, Encoder, layer_plan
from imp.modeling.factorised_encoder import FactorisedEncoder
from imp.modeling.heads import (
    HEAD_INITS,
    ClassifierHead,
    MlpProjection,
    Projection,
    masked_mean,
)
from imp.modeling.moe import ROUTERS, MoeConfig, num_groups
from imp.modeling.multiview import MultiviewEmbedder
from imp.modeling.text_decoder import TextDecoder
from imp.modeling.token_learner import VERSIONS as TOKEN_LEARNERS
from imp.modeling.token_learner import TokenLearnerEncoder

MODALITIES = ("vision", "waveform", "spectrogram", "text")
PAIRS = tuple(itertools.combinations(sorted(MODALITIES), 2))  # unordered, names sorted
# CLIP's temperature: initialised at 1/0.07 and capped at 100, kept positive via the log.
_LOGIT_SCALE_INIT = math.log(1 / 0.07)
_LOGIT_SCALE_MAX = math.log(100.0)


TOWERS = ("shared", "per_modality")
# What a task head reads of a modality's encoded tokens: their "mean" (IMP; the class token
# left out) or the "class_token" (ViT, PolyViT; needs `ImpModel.class_token`).
POOLS = ("mean", "class_token")
# The feed-forward GELU: the "tanh" approximation (flax's default; big_vision's and IMP's
# models) or the "exact" erf form (timm's, PyTorch's default).
GELUS = ("tanh", "exact")
# "linear": one projection per modality, shared by every target (CLIP). "mlp": one
# feed-forward head per (source, target) pair (IMP's reference code).
CONTRASTIVE_HEADS = ("linear", "mlp")
# "clip": one logit scale for every pair. "per_pair": one raw temperature T per pair,
# similarities / (relu(T) + 1e-6), unclipped (IMP's reference code).
TEMPERATURES = ("clip", "per_pair")


def head_key(kind: str, source: str, target: str) -> str:
    """The contrastive head that embeds `source` for comparison with `target`; its parameters
    are `projections_<key>`."""
    return source if kind == "linear" else f"{source}_to_{target}"


def contrastive_parameters(modalities) -> set[str]:
    """Top-level parameters a contrastive task over `modalities` reads, whichever the head and
    temperature options (a model has only one option's: the other names are not there)."""
    names = {"logit_scale"} | {f"projections_{head_key('linear', m, '')}" for m in modalities}
    for a, b in itertools.combinations(sorted(modalities), 2):
        names |= {f"projections_{head_key('mlp', a, b)}", f"projections_{head_key('mlp', b, a)}"}
        names.add(f"temperature_{a}_{b}")
    return names


# Registered, not decorated: gin bindings reach the model built by `Experiment.from_gin` (or an
# `@ImpModel()` reference), never an `ImpModel(...)` written in code such as a benchmark's.
@gin.register
class ImpModel(nn.Module):
    """Inputs are a dict with any of `vision` `[batch, frames, height, width, 3]`,
    `waveform` `[batch, samples]`, `spectrogram` `[batch, time, mel]` and `text`
    `[batch, length]` (int ids, 0 = padding).

    `check_config` and `tokens_per_example` validate a configuration and input shapes against
    it before anything is traced."""

    # (head name, number of classes[, initialiser of `HEAD_INITS`, else `head_init`])
    heads: tuple[tuple, ...] = ()
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 512
    embed_dim: int = 128
    vocab_size: int = 128
    vision_patch: tuple[int, int, int] = (2, 8, 8)
    vision_max_grid: tuple[int, int, int] = (8, 16, 16)
    waveform_patch: int = 128
    max_waveform_patches: int = 128
    max_text_length: int = 64
    spectrogram_patch: tuple[int, int] = (16, 16)
    spectrogram_max_grid: tuple[int, int] = (64, 8)
    scan_layers: bool = True
    remat_policy: str = "none"
    head_init: str = "zeros"
    # Mixture-of-Experts (seed 004 §3.3): 0 experts = dense. MoE FFN every `moe_every`-th
    # layer (V-MoE / LIMoE place one every other layer) or in the last `moe_last` layers.
    num_experts: int = 0
    moe_every: int = 2
    moe_last: int = 0
    router: str = "experts_choose"
    capacity_factor: float = 1.0
    max_group_size: int = 4096
    top_k: int = 1
    batch_priority: bool = False
    # "shared": one encoder for every modality (IMP); "per_modality": the multi-tower
    # baseline of seed 004 §4, one encoder per modality with the same blocks.
    towers: str = "shared"
    # LayerNorm of q and k in every attention layer (`SelfAttention`); IMP's reference code
    # turns it on in its MoE models.
    qk_layernorm: bool = False
    # How attention treats video tokens (`encoder.ATTENTIONS`, seed 001's ViViT Models 1, 3
    # and 4): "joint" space-time attention, IMP's; the factorised forms attend within frames
    # and along positions, and need every token (no DropToken).
    attention: str = "joint"
    # ViViT's Model 2 (`FactorisedEncoder`) when > 0: `num_layers` spatial layers within each
    # frame, then this many temporal layers over the frames' average tokens (ViViT-B: 12 + 4).
    temporal_layers: int = 0
    # TokenLearner (seed 001) after encoder layer `token_learner_layer`: "none", "v1" or
    # "v1.1" (`token_learner.VERSIONS`); each frame's tokens become `token_learner_tokens`
    # learned tokens for the later layers, and with `token_fuser` they are fused back onto the
    # frame's tokens at the end.
    token_learner: str = "none"
    token_learner_layer: int = 0
    token_learner_tokens: int = 8
    token_fuser: bool = False
    # Multiview Transformer (seed 001, MTV) when `views` is set: one tubelet size per view,
    # fewest tokens first (e.g. ((8, 8, 8), (4, 8, 8), (2, 8, 8))), each view with its own
    # encoder of width `view_widths[i]` and `view_layers` layers and cross-view attention;
    # the views' frame tokens feed the shared encoder (`multiview`). `vision_patch` is then
    # unused.
    views: tuple[tuple[int, int, int], ...] = ()
    view_widths: tuple[int, ...] = ()
    view_layers: int = 0
    # `CONTRASTIVE_HEADS`; the MLP heads are `embed_dim` wide inside and out (reference:
    # 1024 and 1024).
    contrastive_head: str = "linear"
    # `TEMPERATURES`; `temperature_init` is where each per-pair temperature starts (reference:
    # 0.2, and 1.0 in the sparse MoE models, "high temperature for fast convergence").
    temperature: str = "clip"
    temperature_init: float = 0.2
    # Vision and spectrogram position tables (`embedders.POSITIONS`): "factorised" per axis
    # (IMP) or "joint" over the grid (ViT; what an imported ViT's table needs).
    positions: str = "factorised"
    # A learned class token before every modality's tokens (`embedders.ClassToken`), and what
    # the heads read (`POOLS`); `gelu` of the feed-forward blocks (`GELUS`).
    class_token: bool = False
    pool: str = "mean"
    gelu: str = "tanh"
    # PolyViT's modality-adaptor layers (seed 000 §3.2, L_adapt): the first `adaptor_layers`
    # of the `num_layers` are one dense stack per entry of `adaptor_modalities`, the rest are
    # shared (and hold the MoE layers, if any). "vision" is one stack for images and videos;
    # "image" and "video" are PolyViT's two (`adaptor_stack`).
    adaptor_layers: int = 0
    adaptor_modalities: tuple[str, ...] = MODALITIES
    # UniT's shared query decoder (`ImpModel.decoder = @QueryDecoder()`), and the heads that
    # decode through it, `(head, kind, classes, queries)` with kind "detection" or
    # "classification" (set from the tasks by the experiment, like `heads`).
    decoder: QueryDecoder | None = None
    decoded: tuple[tuple[str, str, int, int], ...] = ()
    # The LiT decoder (`ImpModel.text_decoder = @TextDecoder()`), shared by every task that
    # generates text; `frozen_encoder` is set by the experiment (`Experiment.
    # encoder_lr_multiplier = 0`, seed 003's default).
    text_decoder: TextDecoder | None = None
    frozen_encoder: bool = False

    def setup(self):
        vision = VisionEmbedder(
            self.d_model, self.vision_patch, self.vision_max_grid, self.positions
        )
        if self.views:
            vision = MultiviewEmbedder(
                self.d_model,
                tuple(tuple(p) for p in self.views),
                tuple(self.view_widths),
                self.view_layers,
                self.d_model // self.num_heads,
                self.vision_max_grid,
                self.scan_layers,
                self.remat_policy,
                self.positions,
                self.gelu == "tanh",
            )
        self.embedders = {
            "vision": vision,
            "waveform": WaveformEmbedder(
                self.d_model, self.waveform_patch, self.max_waveform_patches
            ),
            "spectrogram": SpectrogramEmbedder(
                self.d_model, self.spectrogram_patch, self.spectrogram_max_grid, self.positions
            ),
            "text": TextEmbedder(self.d_model, self.vocab_size, self.max_text_length),
        }
        moe = None
        if self.num_experts:
            moe = MoeConfig(
                self.num_experts,
                self.router,
                self.capacity_factor,
                self.max_group_size,
                self.top_k,
                self.batch_priority,
            )
        make_encoder = functools.partial(
            Encoder,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            scan_layers=self.scan_layers,
            remat_policy=self.remat_policy,
            qk_layernorm=self.qk_layernorm,
            approximate_gelu=self.gelu == "tanh",
        )
        if self.adaptor_layers:
            self.adaptors = {
                m: make_encoder(
                    num_layers=self.adaptor_layers, attention=self.attention, final_norm=False
                )
                for m in self.adaptor_modalities
            }
        sparse = dict(moe=moe, moe_every=self.moe_every if moe else 0, moe_last=self.moe_last)
        if self.temporal_layers:
            make_encoder = functools.partial(
                FactorisedEncoder,
                make_encoder(num_layers=self.num_layers, **sparse, parent=None),
                make_encoder(num_layers=self.temporal_layers, parent=None),
            )
        elif self.token_learner != "none":
            k = self.token_learner_layer
            make_encoder = functools.partial(
                TokenLearnerEncoder,
                make_encoder(num_layers=k, attention=self.attention, **sparse, parent=None),
                make_encoder(
                    num_layers=self.num_layers - k,
                    attention=self.attention,
                    **sparse,
                    parent=None,
                ),
                self.token_learner_tokens,
                self.token_learner,
                self.token_fuser,
            )
        else:
            make_encoder = functools.partial(
                make_encoder,
                num_layers=self.num_layers - self.adaptor_layers,
                attention=self.attention,
                **sparse,
            )
        assert self.towers in TOWERS, self.towers  # `check_config` names a wrong value
        if self.towers == "shared":
            self.encoder = make_encoder()
        else:
            self.encoders = {m: make_encoder() for m in MODALITIES}
        assert self.contrastive_head in CONTRASTIVE_HEADS, self.contrastive_head
        if self.contrastive_head == "linear":
            self.projections = {m: Projection(self.embed_dim) for m in MODALITIES}
        else:
            self.projections = {
                head_key("mlp", s, t): MlpProjection(self.embed_dim, self.embed_dim)
                for s, t in itertools.permutations(MODALITIES, 2)
            }
        if self.class_token:
            self.class_tokens = {m: ClassToken() for m in MODALITIES}
        self.classifiers = {
            name: ClassifierHead(n, init[0] if init else self.head_init)
            for name, n, *init in self.heads
        }
        if self.decoded:
            width = self.decoder.width
            self.queries = {name: QueryEmbeddings(q, width) for name, _, _, q in self.decoded}
            self.detectors = {
                name: DetectionHead(n) for name, kind, n, _ in self.decoded if kind == "detection"
            }
            self.decoded_classifiers = {
                name: DecodedClassifier(n)
                for name, kind, n, _ in self.decoded
                if kind == "classification"
            }
        assert self.temperature in TEMPERATURES, self.temperature
        if self.temperature == "clip":
            self.logit_scale = self.param(
                "logit_scale", nn.initializers.constant(_LOGIT_SCALE_INIT), ()
            )
        else:
            init = nn.initializers.constant(self.temperature_init)
            self.temperatures = {
                f"{a}_{b}": self.param(f"temperature_{a}_{b}", init, ()) for a, b in PAIRS
            }

    def logit_scales(self) -> dict[str, jax.Array]:
        """`logit_scale/<a>/<b>` for every modality pair (`PAIRS`): what similarities of the
        pair's embeddings are multiplied by, 1 / temperature."""
        if self.temperature == "clip":
            scale = jnp.exp(jnp.clip(self.logit_scale, 0.0, _LOGIT_SCALE_MAX))
            return {f"logit_scale/{a}/{b}": scale for a, b in PAIRS}
        return {
            f"logit_scale/{a}/{b}": 1.0 / (nn.relu(self.temperatures[f"{a}_{b}"]) + 1e-6)
            for a, b in PAIRS
        }

    def encode(
        self,
        modality: str,
        x: jax.Array,
        drop_rate: float = 0.0,
        train: bool = False,
        drop_path: float = 0.0,
    ) -> tuple[jax.Array, jax.Array, dict]:
        """One modality -> encoded tokens `[batch, length, d_model]` (the class token first,
        with `class_token`), their mask, and the MoE routing statistics of this modality's
        tokens. In training, DropToken at `drop_rate` and stochastic depth at `drop_path`
        (along the adaptor and shared layers, as seed 000; rng "drop_path")."""
        tokens, mask = self.embedders[modality](x)
        if train and drop_rate > 0.0 and modality != "text":
            tokens, mask = drop_tokens(tokens, mask, drop_rate, self.make_rng("droptoken"))
        if self.class_token:
            tokens, mask = self.class_tokens[modality](tokens, mask)
        grid = self._grid(modality, x.shape[1:])
        # Only `Encoder`s take a rate (`supports_drop_path`, checked per task).
        depth = {"drop_path": drop_path} if train and drop_path else {}
        stack = adaptor_stack(self, modality, x.shape[1] if modality == "vision" else 0)
        if stack is not None:
            tokens, mask, _ = self.adaptors[stack](tokens, mask, grid, **depth)
        encoder = self.encoder if self.towers == "shared" else self.encoders[modality]
        return encoder(tokens, mask, grid, **depth)

    def _grid(self, modality: str, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """`(frames, space)` of a video's tokens, for the factorised attentions."""
        if modality != "vision" or not needs_token_grid(self):
            return None
        frames, height, width = embedders.vision_grid(
            shape[:3], self.vision_patch, self.vision_max_grid
        )
        return frames, height * width

    def pooled(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """What the heads read of encoded tokens (`POOLS`): `[batch, d_model]`."""
        if self.pool == "class_token":
            return tokens[:, 0]
        if self.class_token:
            tokens, mask = tokens[:, 1:], mask[:, 1:]
        return masked_mean(tokens, mask)

    def __call__(
        self,
        inputs: dict[str, jax.Array],
        head: str | None = None,
        drop_rate: float = 0.0,
        train: bool = False,
        drop_path: float = 0.0,
    ) -> dict[str, jax.Array]:
        """Returns `logits` for a classification head, else `embedding/<source>/<target>`
        (L2-normalised `[batch, embed_dim]`: the source input in the space it shares with
        `target`) for each input modality and each other modality; plus `pooled/<modality>`
        and the pairs' `logit_scale/<a>/<b>`."""
        out = self.logit_scales()
        for modality in MODALITIES:
            if modality in inputs:
                tokens, mask, stats = self.encode(
                    modality, inputs[modality], drop_rate, train, drop_path
                )
                out[f"pooled/{modality}"] = self.pooled(tokens, mask)
                out.update({f"routing/{modality}/{k}": v for k, v in stats.items()})
        if head is not None:
            source = next(m for m in MODALITIES if f"pooled/{m}" in out)
            out["logits"] = self.classifiers[head](out[f"pooled/{source}"])
        else:
            for source in (m for m in MODALITIES if f"pooled/{m}" in out):
                targets = {t: head_key(self.contrastive_head, source, t) for t in MODALITIES}
                del targets[source]
                embedded = {
                    key: self.projections[key](out[f"pooled/{source}"])
                    for key in dict.fromkeys(targets.values())  # a linear head: one for all
                }
                out.update({f"embedding/{source}/{t}": embedded[k] for t, k in targets.items()})
        return out

    def memory(
        self,
        inputs: dict[str, jax.Array],
        drop_rate: float = 0.0,
        train: bool = False,
        drop_path: float = 0.0,
    ) -> tuple[jax.Array, jax.Array, dict]:
        """The encoded tokens of every input modality, concatenated `[batch, length, d_model]`
        (what a decoder cross-attends to), their mask, and MoE routing statistics."""
        tokens, masks, out = [], [], {}
        for modality in MODALITIES:
            if modality in inputs:
                t, mask, stats = self.encode(
                    modality, inputs[modality], drop_rate, train, drop_path
                )
                tokens.append(t)
                masks.append(mask)
                out.update({f"routing/{modality}/{k}": v for k, v in stats.items()})
        tokens, mask = jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)
        if self.frozen_encoder:
            tokens = jax.lax.stop_gradient(tokens)
        return tokens, mask, out

    def text_logits(
        self,
        inputs: dict[str, jax.Array],
        tokens: jax.Array,
        head: str | None = None,
        drop_rate: float = 0.0,
        train: bool = False,
        drop_path: float = 0.0,
    ) -> dict[str, jax.Array]:
        """Teacher forcing: the text decoder's `logits` `[batch, length, vocab]` of the
        sequences `tokens` `[batch, length]` (position i reads token i - 1, position 0 the
        start id), over the encoded inputs."""
        del head  # one decoder for every task: the prompt says which task it is
        memory, mask, out = self.memory(inputs, drop_rate, train, drop_path)
        previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=START)
        out["logits"] = self.text_decoder(previous, memory, mask)[0]
        return out

    def text_step(
        self, memory: jax.Array, mask: jax.Array, previous: jax.Array, cache: jax.Array, index
    ) -> tuple[jax.Array, jax.Array]:
        """One decoding step: the logits `[batch, 1, vocab]` after `previous` `[batch, 1]`
        at position `index`, and the updated key/value cache."""
        return self.text_decoder(previous, memory, mask, cache, index)

    def decode(
        self,
        inputs: dict[str, jax.Array],
        head: str,
        drop_rate: float = 0.0,
        train: bool = False,
        drop_path: float = 0.0,
    ) -> dict[str, jax.Array]:
        """A decoded task's outputs: every input modality encoded, their tokens concatenated
        (seed 002 §3.3), the head's queries decoded over them. Detection gives
        `class_logits` `[layers, batch, queries, classes + 1]` and `boxes` `[layers, batch,
        queries, 4]`; a classifier `logits` `[batch, classes]` from the last layer."""
        tokens, mask, out = self.memory(inputs, drop_rate, train, drop_path)
        positions = []
        for modality in (m for m in MODALITIES if m in inputs):
            grid = token_grid(self, modality, inputs[modality].shape[1:])
            code = grid_positions(grid, self.decoder.width)
            if self.class_token:
                code = jnp.concatenate([jnp.zeros_like(code[:1]), code])
            positions.append(code)
        queries = self.queries[head](tokens.shape[0])
        hidden = self.decoder(queries, tokens, mask, jnp.concatenate(positions))
        if head in self.detectors:
            out["class_logits"], out["boxes"] = self.detectors[head](hidden)
        else:
            out["logits"] = self.decoded_classifiers[head](hidden[-1])
        return out

    def init_everything(self, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Touches every embedder, adaptor stack, projection and head so `init` creates all
        parameters (a one-frame clip reaches the "image" adaptors)."""
        out = self(inputs)
        if self.adaptor_layers:
            self.encode("vision", inputs["vision"][:, :1])
        for name, *_ in self.heads:
            self.classifiers[name](out["pooled/vision"])
        for name, *_ in self.decoded:
            self.decode({"text": inputs["text"]}, name)
        if self.text_decoder is not None:
            self.text_logits({"text": inputs["text"]}, inputs["text"])
        return out


def _one_of(field: str, value, options) -> None:
    if value not in options:
        hint = did_you_mean(str(value), options) or f"; choose from {tuple(options)}"
        raise ImpError(f"ImpModel.{field} = {value!r} is not known{hint}")


ADAPTOR_STACKS = (*MODALITIES, "image", "video")


def adaptor_stack(model: ImpModel, modality: str, frames: int) -> str | None:
    """The adaptor stack an input goes through (None: none, straight to the shared layers):
    its modality's, or for vision "image" (one frame) or "video" where those are configured
    apart (PolyViT's image and video tokenizers)."""
    if not model.adaptor_layers:
        return None
    if modality == "vision":
        split = "image" if frames == 1 else "video"
        if split in model.adaptor_modalities:
            return split
    return modality if modality in model.adaptor_modalities else None


def supports_drop_path(model: ImpModel) -> bool:
    """Whether the encoder takes a stochastic depth rate: the plain `Encoder` (joint or
    factorised attention, with or without adaptors), not ViViT's factorised encoder,
    TokenLearner or MTV."""
    return not model.temporal_layers and model.token_learner == "none" and not model.views


def needs_token_grid(model: ImpModel) -> bool:
    """Whether the encoder reads video tokens as a (frames, space) grid (so no DropToken):
    ViViT's factorised models and TokenLearner work frame by frame."""
    return model.attention != "joint" or model.temporal_layers > 0 or model.token_learner != "none"


def check_config(model: ImpModel) -> None:
    """Every field's type and range, and the constraints between fields; an `ImpError` naming
    the first wrong one."""
    validation.check_fields(model, "ImpModel")
    for field in ("d_model", "num_layers", "num_heads", "mlp_dim", "embed_dim", "vocab_size"):
        validation.at_least(f"ImpModel.{field}", getattr(model, field), 1)
    for field in ("waveform_patch", "max_waveform_patches", "max_text_length", "max_group_size"):
        validation.at_least(f"ImpModel.{field}", getattr(model, field), 1)
    for field in ("vision_patch", "vision_max_grid", "spectrogram_patch", "spectrogram_max_grid"):
        validation.require(
            min(getattr(model, field)) >= 1,
            f"ImpModel.{field} = {getattr(model, field)}: every size must be >= 1",
        )
    validation.require(
        model.d_model % model.num_heads == 0,
        f"ImpModel.num_heads = {model.num_heads} does not divide ImpModel.d_model = "
        f"{model.d_model}",
    )
    _one_of("towers", model.towers, TOWERS)
    _one_of("remat_policy", model.remat_policy, REMAT_POLICIES)
    _one_of("attention", model.attention, ATTENTIONS)
    validation.require(
        model.attention != "factorised_dot_product" or model.num_heads % 2 == 0,
        f"ImpModel.attention = 'factorised_dot_product' splits the heads in half (space and "
        f"time): ImpModel.num_heads = {model.num_heads} must be even",
    )
    _one_of("token_learner", model.token_learner, ("none", *TOKEN_LEARNERS))
    if model.token_learner != "none":
        validation.require(
            isinstance(model.token_learner_layer, int)
            and 1 <= model.token_learner_layer < model.num_layers,
            f"ImpModel.token_learner_layer = {model.token_learner_layer!r}: the TokenLearner "
            f"goes after one of layers 1 .. {model.num_layers - 1} (ImpModel.num_layers = "
            f"{model.num_layers})",
        )
        validation.at_least("ImpModel.token_learner_tokens", model.token_learner_tokens, 1)
        validation.require(
            not model.temporal_layers,
            "ImpModel.token_learner goes into a joint or factorised-attention encoder, not "
            "the factorised encoder (ImpModel.temporal_layers)",
        )
    validation.at_least("ImpModel.temporal_layers", model.temporal_layers, 0)
    validation.require(
        isinstance(model.adaptor_layers, int) and 0 <= model.adaptor_layers < model.num_layers,
        f"ImpModel.adaptor_layers = {model.adaptor_layers!r}: PolyViT's modality-adaptor layers "
        f"are some of the ImpModel.num_layers = {model.num_layers}, at least one left shared",
    )
    validation.require(
        not model.adaptor_layers
        or (
            model.towers == "shared"
            and not model.temporal_layers
            and model.token_learner == "none"
            and not model.views
        ),
        "ImpModel.adaptor_layers go before a shared encoder of joint or factorised attention: "
        "not with towers = 'per_modality', temporal_layers, token_learner or views",
    )
    validation.require(
        isinstance(model.adaptor_modalities, tuple | list)
        and set(model.adaptor_modalities) <= set(ADAPTOR_STACKS)
        and not (
            "vision" in model.adaptor_modalities
            and {"image", "video"} & set(model.adaptor_modalities)
        ),
        f"ImpModel.adaptor_modalities = {model.adaptor_modalities!r}: a tuple of "
        f"{ADAPTOR_STACKS}, with 'vision' (one stack for images and videos) or 'image' and "
        "'video', not both",
    )
    if model.views:
        _check_views(model)
    validation.require(
        not model.temporal_layers or model.attention == "joint",
        f"ImpModel.temporal_layers = {model.temporal_layers} (ViViT's factorised encoder) "
        f"attends jointly within frames: it takes ImpModel.attention = 'joint', not "
        f"{model.attention!r}",
    )
    _one_of("head_init", model.head_init, HEAD_INITS)
    for name, _, *init in model.heads:
        if init:
            _one_of(f"heads['{name}'] initialiser", init[0], HEAD_INITS)
    _one_of("positions", model.positions, POSITIONS)
    _one_of("pool", model.pool, POOLS)
    _one_of("gelu", model.gelu, GELUS)
    validation.require(
        model.pool != "class_token" or model.class_token,
        "ImpModel.pool = 'class_token' reads the class token: bind ImpModel.class_token = True",
    )
    validation.require(
        not model.class_token or not (needs_token_grid(model) or model.views),
        "ImpModel.class_token adds a token outside the video's grid of frames and positions, "
        "which ViViT's factorised models, TokenLearner and MTV (ImpModel.attention, "
        "temporal_layers, token_learner, views) read whole: use it with a joint encoder",
    )
    _check_decoder(model)
    _check_text_decoder(model)
    _one_of("router", model.router, ROUTERS)
    _one_of("contrastive_head", model.contrastive_head, CONTRASTIVE_HEADS)
    _one_of("temperature", model.temperature, TEMPERATURES)
    validation.require(
        model.temperature_init > 0,
        f"ImpModel.temperature_init = {model.temperature_init}: a temperature must be > 0",
    )
    validation.at_least("ImpModel.num_experts", model.num_experts, 0)
    if model.num_experts:
        validation.at_least("ImpModel.capacity_factor", model.capacity_factor, 1e-6)
        validation.require(
            1 <= model.top_k <= model.num_experts,
            f"ImpModel.top_k = {model.top_k} must lie in [1, num_experts = {model.num_experts}]",
        )
        parts = [model.num_layers - model.adaptor_layers]
        if model.token_learner != "none":
            parts = [model.token_learner_layer, model.num_layers - model.token_learner_layer]
        try:
            for layers in parts:
                layer_plan(layers, model.moe_every, model.moe_last)
        except ValueError as error:
            where = " (the layers before and after the TokenLearner)" if len(parts) > 1 else ""
            raise ImpError(f"ImpModel MoE layers{where}: {error}") from None


DECODED_KINDS = ("detection", "classification")


def _check_decoder(model: ImpModel) -> None:
    decoder = model.decoder
    if decoder is None:
        validation.require(
            not model.decoded,
            f"the tasks {[d[0] for d in model.decoded]} decode (UniT): bind ImpModel.decoder "
            "= @QueryDecoder()",
        )
        return
    _check_decoder_fields(decoder, "decoder", QueryDecoder)
    for name, kind, classes, queries in model.decoded:
        _one_of(f"decoded['{name}'] kind", kind, DECODED_KINDS)
        validation.at_least(f"the queries of '{name}'", queries, 1)
        validation.at_least(f"the classes of '{name}'", classes, 1)


def _check_text_decoder(model: ImpModel) -> None:
    decoder = model.text_decoder
    if decoder is None:
        return
    _check_decoder_fields(decoder, "text_decoder", TextDecoder)
    validation.at_least("TextDecoder.max_length", decoder.max_length, 1)
    validation.at_least("TextDecoder.vocab_size", decoder.vocab_size, 0)  # 0: the tasks'


def _check_decoder_fields(decoder, field: str, kind: type) -> None:
    """`ImpModel.<field>` is a `kind` with positive sizes, heads that divide its width, and a
    known remat policy."""
    name = kind.__name__
    validation.require(
        isinstance(decoder, kind), f"ImpModel.{field} = {decoder!r}: expected @{name}()"
    )
    validation.check_fields(decoder, name, scalars_only=True)
    for size in ("width", "num_layers", "num_heads", "mlp_dim"):
        validation.at_least(f"{name}.{size}", getattr(decoder, size), 1)
    validation.require(
        decoder.width % decoder.num_heads == 0,
        f"{name}.num_heads = {decoder.num_heads} does not divide {name}.width = {decoder.width}",
    )
    _one_of(f"{name}.remat_policy", decoder.remat_policy, REMAT_POLICIES)


def _check_views(model: ImpModel) -> None:
    views, widths = model.views, model.view_widths
    validation.require(
        all(len(p) == 3 and min(p) >= 1 for p in views),
        f"ImpModel.views = {views}: each view is a tubelet size (frames, height, width)",
    )
    validation.require(
        len(widths) == len(views),
        f"ImpModel.view_widths = {widths}: one width per view of ImpModel.views ({len(views)})",
    )
    head_dim = model.d_model // model.num_heads
    validation.require(
        all(isinstance(w, int) and w >= head_dim and w % head_dim == 0 for w in widths),
        f"ImpModel.view_widths = {widths}: each a multiple of the head width {head_dim} "
        f"(ImpModel.d_model / num_heads)",
    )
    validation.at_least("ImpModel.view_layers", model.view_layers, 1)
    depths = [p[0] for p in views]
    validation.require(
        all(a % b == 0 and a > b for a, b in itertools.pairwise(depths)),
        f"ImpModel.views = {views}: fewest tokens first, each view's tubelet depth a multiple "
        "of the next one's (a frame of view i spans whole frames of view i+1)",
    )
    validation.require(
        len({p[1:] for p in views}) == 1,
        f"ImpModel.views = {views}: the views share the tubelet's height and width (they "
        "differ in time, as MTV's B/2 + S/4 + Ti/8)",
    )
    validation.require(
        model.attention == "joint" and not model.temporal_layers and model.token_learner == "none",
        "ImpModel.views (MTV) feeds the shared encoder the views' frame tokens: it takes "
        "attention 'joint', no temporal_layers and no token_learner",
    )


def token_grid(model: ImpModel, modality: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The grid of an input's tokens before DropToken and the class token: (t, h, w)
    tubelets, (time, mel) patches, waveform patches, text tokens, or MTV's frame tokens."""
    if modality == "vision" and model.views:
        grids = [embedders.vision_grid(shape[:3], p, model.vision_max_grid) for p in model.views]
        return (sum(g[0] for g in grids),)  # the views' frame tokens
    if modality == "vision":
        return embedders.vision_grid(shape[:3], model.vision_patch, model.vision_max_grid)
    if modality == "waveform":
        return (
            embedders.waveform_grid(shape[0], model.waveform_patch, model.max_waveform_patches),
        )
    if modality == "spectrogram":
        return embedders.spectrogram_grid(
            shape, model.spectrogram_patch, model.spectrogram_max_grid
        )
    return (embedders.text_tokens(shape[0], model.max_text_length),)


def tokens_per_example(
    model: ImpModel, shapes: dict[str, tuple[int, ...]], drop_rate: float = 0.0
) -> dict[str, int]:
    """Encoder tokens of each input (per-example `shapes`, as `TaskSpec.input_shapes` gives),
    after DropToken at `drop_rate` (which spares text). Raises an `ImpError` when a shape does
    not fit the model: not divisible by its patch, past a position table, text too long."""
    tokens = {}
    for modality, shape in shapes.items():
        full = math.prod(token_grid(model, modality, shape))
        keep = full if modality == "text" else max(1, round(full * (1.0 - drop_rate)))
        tokens[modality] = keep + model.class_token
    return tokens


def check_routing_groups(model: ImpModel, tokens: int, where: str) -> None:
    """MoE token groups of a batch of `tokens` tokens (one modality) must each hold at least as
    many tokens as there are experts: the group count is the smallest that divides the tokens
    evenly, and an awkward token count can force tiny groups in which every expert routes the
    same few tokens."""
    if not model.num_experts:
        return
    size = tokens // num_groups(tokens, model.max_group_size)
    validation.require(
        size >= model.num_experts,
        f"{where}: its {tokens} tokens split evenly into MoE groups of only {size} tokens "
        f"(ImpModel.max_group_size = {model.max_group_size}), fewer than ImpModel.num_experts "
        f"= {model.num_experts}; change the batch size or max_group_size",
    )


def dummy_inputs(model: ImpModel, batch: int = 1) -> dict[str, jax.Array]:
    """Smallest inputs that exercise every embedder."""
    pt, ph, pw = model.views[0] if model.views else model.vision_patch
    return {
        "vision": jnp.zeros((batch, pt, ph, pw, 3), jnp.float32),
        "waveform": jnp.zeros((batch, model.waveform_patch), jnp.float32),
        "spectrogram": jnp.zeros((batch, *model.spectrogram_patch), jnp.float32),
        "text": jnp.ones((batch, 4), jnp.int32),
    }


def init_variables(model: ImpModel, rng: jax.Array) -> dict:
    """All parameters of the model, boxed with their logical axis names."""
    return model.init({"params": rng}, dummy_inputs(model), method=ImpModel.init_everything)
