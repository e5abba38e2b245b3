"""Space-time factorisations of attention over video tokens (seed 001, ViViT Models 3 and 4).

Video tokens come from `VisionEmbedder` in (time, height, width) order, so a `[batch, length,
...]` array with `length = frames x space` (`grid = (frames, space)`: tubelets along time, and
per tubelet frame) reshapes to `[batch, frames, space, ...]`. Attention over *space* runs
inside each frame (the frames moved into the batch); attention over *time* runs along each
spatial position (the positions moved into the batch). Other inputs are one frame of
`length` positions (`grid=None`): their spatial step is joint attention and their temporal step
attends each token to itself.
"""

import jax
import jax.numpy as jnp


def frames_and_space(length: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is None:
        return 1, length
    frames, space = grid
    if frames * space != length:  # `check_config` and the experiment refuse DropToken first
        raise ValueError(f"{length} tokens do not form the grid {grid}")
    return frames, space


def to_space(x: jax.Array, grid) -> jax.Array:
    """`[batch, length, ...]` -> `[batch * frames, space, ...]`: one row per frame."""
    frames, space = frames_and_space(x.shape[1], grid)
    return x.reshape(x.shape[0] * frames, space, *x.shape[2:])


def from_space(x: jax.Array, batch: int) -> jax.Array:
    return x.reshape(batch, -1, *x.shape[2:])


def to_time(x: jax.Array, grid) -> jax.Array:
    """`[batch, length, ...]` -> `[batch * space, frames, ...]`: one row per position."""
    frames, space = frames_and_space(x.shape[1], grid)
    x = x.reshape(x.shape[0], frames, space, *x.shape[2:]).swapaxes(1, 2)
    return x.reshape(x.shape[0] * space, frames, *x.shape[3:])


def from_time(x: jax.Array, batch: int) -> jax.Array:
    space, frames = x.shape[0] // batch, x.shape[1]
    x = x.reshape(batch, space, frames, *x.shape[2:]).swapaxes(1, 2)
    return x.reshape(batch, frames * space, *x.shape[3:])


def factorised_heads(attend, q, k, v, mask, grid) -> jax.Array:
    """Model 4: the first half of the heads attend over space, the second half over time.

    `q, k, v`: `[batch, heads, length, kv]`; `mask`: `[batch, length]`; `attend(q, k, v,
    mask)` is plain attention of that layout. Returns `[batch, heads, length, kv]`.
    """
    batch, heads = q.shape[:2]
    half = heads // 2  # `check_config` asks for an even number of heads

    def over(to, back, q, k, v):
        # Heads next to length for `to`/`back`: [b, h, l, kv] -> [b, l, h, kv] and back.
        q, k, v = (to(a.swapaxes(1, 2), grid).swapaxes(1, 2) for a in (q, k, v))
        out = attend(q, k, v, to(mask, grid))
        return back(out.swapaxes(1, 2), batch).swapaxes(1, 2)

    space = over(to_space, from_space, q[:, :half], k[:, :half], v[:, :half])
    time = over(to_time, from_time, q[:, half:], k[:, half:], v[:, half:])
    return jnp.concatenate([space, time], axis=1)
