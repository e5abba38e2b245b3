"""ViViT's Model 2 (seed 001), the factorised encoder: a spatial Transformer over the tokens of
each frame (tubelets of one time step, `factorised.to_space`), each frame's tokens averaged
into one, and a temporal Transformer over the frames. Its attention costs
`frames x space^2 + frames^2` per clip instead of `(frames x space)^2`, and the spatial
encoder is an image ViT that image checkpoints initialise directly.

The frame tokens already carry their time position: `VisionEmbedder` adds the factorised
(time, height, width) position tables before the spatial encoder.
"""

import flax.linen as nn
import jax

from imp.modeling import factorised
from imp.modeling.heads import masked_mean


class FactorisedEncoder(nn.Module):
    """`(tokens [batch, frames x space, embed], mask, grid)` -> frame tokens
    `[batch, frames, embed]`, their mask (a frame with any kept token) and the spatial
    encoder's routing statistics. Non-video inputs are one frame (`grid=None`)."""

    spatial: nn.Module  # an `Encoder`
    temporal: nn.Module  # an `Encoder` (dense)

    def __call__(
        self, x: jax.Array, mask: jax.Array, grid: tuple[int, int] | None = None
    ) -> tuple[jax.Array, jax.Array, dict]:
        batch, _, d_model = x.shape
        frame_mask = factorised.to_space(mask, grid)  # [batch * frames, space]
        tokens, _, stats = self.spatial(factorised.to_space(x, grid), frame_mask)
        frames = masked_mean(tokens, frame_mask).reshape(batch, -1, d_model)
        kept = frame_mask.any(-1).reshape(batch, -1)
        tokens, kept, _ = self.temporal(frames, kept)
        return tokens, kept, stats
