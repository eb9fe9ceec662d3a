"""Sales reps and managers, and the tree a forecast rolls up."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field


class Owner(BaseModel):
    """A person who owns deals or manages people who do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    manager_id: str | None = None
    """The owner's manager; None at the top of the tree."""
    team: str | None = None
    """Team label ("Key accounts", "Direct"), used by the model and for grouping."""
    email: str | None = None


class OrgTree:
    """The manager tree built from a list of owners. Cycles and dangling managers are reported."""

    def __init__(self, owners: Iterable[Owner]) -> None:
        self.owners: dict[str, Owner] = {o.id: o for o in owners}
        self.children: dict[str | None, list[str]] = {}
        for owner in self.owners.values():
            parent = owner.manager_id if owner.manager_id in self.owners else None
            self.children.setdefault(parent, []).append(owner.id)
        for kids in self.children.values():
            kids.sort(key=lambda i: (self.owners[i].name, i))
        self._check_cycles()

    def _check_cycles(self) -> None:
        for start in self.owners:
            seen = {start}
            node = self.owners[start].manager_id
            while node is not None and node in self.owners:
                if node in seen:
                    raise ValueError(f"owner {start!r}: manager chain loops through {node!r}")
                seen.add(node)
                node = self.owners[node].manager_id

    @property
    def roots(self) -> list[str]:
        return list(self.children.get(None, []))

    def subtree(self, owner_id: str) -> list[str]:
        """The owner and everyone below them, depth first."""
        if owner_id not in self.owners:
            raise KeyError(f"unknown owner {owner_id!r}")
        out: list[str] = []
        stack = [owner_id]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(self.children.get(node, [])))
        return out

    def direct_reports(self, owner_id: str | None) -> list[str]:
        return list(self.children.get(owner_id, []))

    def is_manager(self, owner_id: str) -> bool:
        return bool(self.children.get(owner_id))

    def chain(self, owner_id: str) -> list[str]:
        """The owner, their manager, and so on up to the top."""
        out = []
        node: str | None = owner_id
        while node is not None and node in self.owners:
            out.append(node)
            node = self.owners[node].manager_id
        return out

    def find(self, text: str) -> Owner:
        """An owner by id or by (case-insensitive, unique) name or name prefix."""
        if text in self.owners:
            return self.owners[text]
        low = text.casefold()
        exact = [o for o in self.owners.values() if o.name.casefold() == low]
        if len(exact) == 1:
            return exact[0]
        prefix = [o for o in self.owners.values() if o.name.casefold().startswith(low)]
        if len(prefix) == 1:
            return prefix[0]
        if not prefix:
            raise KeyError(f"no owner matches {text!r}")
        names = ", ".join(sorted(o.name for o in prefix)[:5])
        raise KeyError(f"{text!r} matches several owners: {names}")
