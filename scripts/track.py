"""Track one target: ``python scripts/track.py checkpoint=... sequence=<frames folder or video> init=[x,y,w,h]``.

Writes per-frame boxes (``track.json``), annotated frames and an animated GIF (or MP4) of the track into
the output folder. The work is :func:`frcnn.tasks.track.track`.
"""

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("track")
def main(cfg: DictConfig) -> None:
    from frcnn.tasks.track import track

    track(cfg)


if __name__ == "__main__":
    main()
