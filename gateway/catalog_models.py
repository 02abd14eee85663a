"""The catalog by model, as the reference API sees it: static deployments in
(``register``/``deregister``, never expiring), model entries out (``get``,
``get_metadata``, ``all_entries``, ``list_all``, ``find_by_capability``).

``ModelRegistry`` is a mixin of ``gateway.catalog.ModelCatalog`` (it uses the catalog's
nodes, its by-model index and its add, drop and re-index steps, which notify the
listeners). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.nodeinfo import CatalogEvent, Deployment, ModelEntry, ModelMetadata, NodeInfo
from shared.errors import Internal

if TYPE_CHECKING:
    from gateway.clock import Clock


class ModelRegistry:
    """The reference API's half of the catalog (mixed into ``ModelCatalog``)."""

    _clock: Clock
    _nodes: dict[str, NodeInfo]
    _by_model: dict[str, dict[str, NodeInfo]]

    if TYPE_CHECKING:

        def _notify(self, event: CatalogEvent, node: NodeInfo) -> None:
            """The catalog's: call every listener."""

        def _add(self, node: NodeInfo) -> None:
            """The catalog's: a new node, indexed."""

        def _drop(self, node: NodeInfo) -> None:
            """The catalog's: a node gone, unindexed."""

        def _set_models(self, node: NodeInfo, models: dict[str, frozenset[str]]) -> None:
            """The catalog's: a node's models replaced, re-indexed."""

    def register(
        self, model: str, node_id: str, region: str, capabilities: Iterable[str], **attrs: Any
    ) -> None:
        """Deploy ``model`` on ``node_id`` (static: never expires); re-registering updates it."""
        caps = frozenset(capabilities)
        node = self._nodes.get(node_id)
        if node is None:
            node = NodeInfo(node_id=node_id, region=region, last_seen=self._clock())
            for key, value in attrs.items():
                setattr(node, key, value)
            node.models = {model: caps}
            node.capabilities = caps
            self._add(node)
            return
        for key, value in attrs.items():
            setattr(node, key, value)
        node.region = region
        models = dict(node.models)
        models[model] = caps
        self._set_models(node, models)
        self._notify(CatalogEvent.MOVED, node)

    def deregister(self, model: str, node_id: str) -> None:
        """Remove ``model`` from ``node_id``; a static node left with no model goes away."""
        node = self._nodes.get(node_id)
        if node is None or model not in node.models:
            return
        models = dict(node.models)
        del models[model]
        if not models and node.static:
            self._drop(node)
            return
        self._set_models(node, models)
        self._notify(CatalogEvent.MOVED, node)

    def find_by_capability(self, capability: str) -> list[tuple[str, str]]:
        """(node_id, region) of every deployment serving ``capability``."""
        out: list[tuple[str, str]] = []
        for model, nodes in self._by_model.items():
            for node in nodes.values():
                if capability in node.models.get(model, ()):
                    out.append((node.node_id, node.region))
        return out

    def list_all(self) -> list[str]:
        """Distinct model ids with at least one deployment."""
        return list(self._by_model)

    def get(self, model: str) -> ModelEntry | None:
        """The model's entry, or None."""
        nodes = self._by_model.get(model)
        if not nodes:
            return None
        deployments = [Deployment(n.node_id, n.region, n.models[model]) for n in nodes.values()]
        caps: dict[str, None] = {}
        for dep in deployments:
            for cap in sorted(dep.capabilities):
                caps[cap] = None
        meta = ModelMetadata(model_id=model, name=model, version="1.0.0", capabilities=list(caps))
        return ModelEntry(model_id=model, metadata=meta, deployments=deployments)

    def get_metadata(self, model: str) -> ModelMetadata:
        """The model's metadata (capabilities: union over deployments); raises Internal."""
        entry = self.get(model)
        if entry is None:
            raise Internal(f"Model not found: {model}")
        return entry.metadata

    def all_entries(self) -> list[ModelEntry]:
        """Every model entry."""
        return [e for m in list(self._by_model) if (e := self.get(m)) is not None]
