"""The soup: a population of free particles on a random regular or a complete graph, no organism and no task
(docs/science.md §6).

Particles only self-train and interact through the population events, as in the artificial-chemistry experiments of
the earlier self-replication literature; their kinds are counted over time in the same record format as organisms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.config import Config
from sim.model import ParticleModel, model_config
from sim.topology import soup_graph


class SoupModel(ParticleModel):
    """`soup.size` free particles on a random `soup.degree`-regular or the complete graph (`soup.graph`);
    self-training plus population events."""

    mode = "soup"

    def __init__(
        self,
        config: Config | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        agents: bool = True,
        **keys: Any,
    ) -> None:
        """A soup of `config`, or of config keys given as keywords (`steps=20, soup_size=200`) on top of the soup's
        defaults."""
        config = model_config(config, keys, self.mode)
        graph = soup_graph(config.soup.size, config.soup.degree, config.seed, config.soup.graph)
        super().__init__(config, config.soup.size, graph, run_dir, resume, agents)
