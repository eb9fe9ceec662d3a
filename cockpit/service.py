"""The one facade the CLI and the screens call: sync, deals as of a date, scores, forecast, submit.

No Textual here. Every method opens its own store connection, so a thread worker can call it
while the UI thread reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, cached_property
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cockpit.config import STORE_FILE, ConfigError, Settings, data_dir, describe_validation
from cockpit.models import (
    DealHistory,
    DealScore,
    DealSnapshot,
    FiscalCalendar,
    ForecastCategory,
    OrgTree,
    Pipeline,
    Quarter,
    SyncProgress,
)
from cockpit.store import Store
from cockpit.store.store import from_us

if TYPE_CHECKING:
    from cockpit.forecast.config import ForecastConfig, Fx
    from cockpit.models.columns import HistoryColumns
    from cockpit.models.submission import Draft
    from cockpit.review import ReviewWalk

log = logging.getLogger(__name__)

DEMO_PARAMS_FILE = "demo.json"
"""Seed and size of the demo org last synced into the data dir."""


@dataclass(frozen=True)
class SyncSummary:
    """What one sync run did."""

    run_id: int
    connector: str
    batches: int
    opportunities: int
    changes: int
    seconds: float
    resumed_from: str | None = None


@dataclass(frozen=True)
class ModelRun:
    """What training or scoring did."""

    version: str
    report: Any
    """The TrainReport when the model was (re)trained, else None."""
    scored: int
    seconds: float
    retrained: bool


@dataclass(frozen=True)
class BacktestRun:
    """A stored backtest: the report and how each quarter's probabilities were made."""

    report: Any
    method: dict[str, str]
    scope: str
    seconds: float


@dataclass(frozen=True)
class DealFilter:
    """Which deals a listing shows."""

    quarter: Quarter | None = None
    stage: str | None = None
    owner: str | None = None
    pipeline: str | None = None
    include_past_due: bool = True
    """Open deals whose close date already passed count in the current quarter (they still need a call)."""


@dataclass(frozen=True)
class ForecastView:
    """The Forecast screen's data for one quarter and scope."""

    rollup: Any
    scope: str
    scope_name: str
    funnel: list[Any]
    sources: list[Any]
    last_submission: Any
    previous_submission: Any
    team_submissions: dict[str, Any]
    run_rate: Any
    scored: bool
    tree: OrgTree

    @property
    def submission_delta(self) -> Decimal | None:
        """The latest submission's number minus the one before it."""
        if self.last_submission is None or self.previous_submission is None:
            return None
        return self.last_submission.manager_number - self.previous_submission.manager_number


@dataclass(frozen=True)
class ChangesView:
    """The Changes screen's data."""

    waterfall: Any
    scope: str
    scope_name: str
    owner_names: dict[str, str]


@dataclass(frozen=True)
class CommitPreview:
    """What the Commit screen shows before the manager confirms."""

    submission: Any
    """The submission as it would be stored (validated, no id yet)."""
    previous: Any
    """The scope's latest submission for the quarter, if any."""
    team: Any
    """The team's latest submissions rolled up (managers only)."""
    scope_name: str


@dataclass(frozen=True)
class SubmissionAccuracy:
    """A submission and, once its quarter has closed, what was actually booked."""

    submission: Any
    actual: Decimal | None

    @property
    def error(self) -> float | None:
        """(number − actual) ÷ actual in %, + means the manager over-called."""
        if self.actual is None or not self.actual:
            return None
        return float((self.submission.manager_number - self.actual) / self.actual * 100)


@dataclass(frozen=True)
class HistoryView:
    scope: str
    scope_name: str
    rows: list[SubmissionAccuracy]
    """Newest first."""
    backtest: dict[str, Any] | None
    """The latest stored backtest report for the scope (`cockpit backtest`), if any."""


@dataclass(frozen=True)
class DealStory:
    """One deal's whole story for the Deal screen."""

    deal: Any
    owner_name: str
    stage_name: str
    events: list[tuple[date, str]]
    """Dated happenings, oldest first: stage moves, amount and close-date changes, activities."""
    weekly: list[tuple[date, float, float | None]]
    """(week, CRM stage probability, model's probability or None)."""
    score: DealScore | None


@dataclass
class DealRow:
    """One row of a deal listing: the deal as of a date, with names resolved."""

    snapshot: DealSnapshot
    owner_name: str
    stage_name: str
    pipeline_name: str
    category: ForecastCategory
    days_in_stage: int
    amount: Decimal
    """The amount in the reporting currency."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def deal(self):  # noqa: ANN201 - Opportunity
        return self.snapshot.deal


class CockpitService:
    """Orchestration over the store, connectors, scoring and forecast layers."""

    def __init__(self, settings: Settings, data_path: Path | str | None = None, *, today: date | None = None) -> None:
        self.settings = settings
        self.data_dir = data_dir(settings, data_path)
        self.store_path = self.data_dir / STORE_FILE
        self._today = today or settings.as_of
        self.calendar = FiscalCalendar(start_month=settings.calendar.fiscal_start_month)

    # -- basics --------------------------------------------------------------------------------

    def _forecast_table(self, *, with_quotas: bool) -> ForecastConfig:
        from cockpit.forecast.config import ForecastConfig

        raw = dict(self.settings.forecast)
        if self.settings.connector == "demo":
            from connectors._demo_fx import DEMO_REPORTING_CURRENCY, demo_fx_table

            if not raw.get("fx_rates") and raw.get("reporting_currency", DEMO_REPORTING_CURRENCY) == DEMO_REPORTING_CURRENCY:
                raw["reporting_currency"] = DEMO_REPORTING_CURRENCY
                raw["fx_rates"] = demo_fx_table()
                if with_quotas and not raw.get("quotas"):
                    raw["quotas"] = self._demo_quotas()
        try:
            return ForecastConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError("Config has errors", f"[forecast]: {describe_validation(exc)}") from None

    def _demo_quotas(self) -> list[dict[str, str]]:
        """The demo org's quotas, cached in the data dir: computing them replays the simulation (~1.3 s
        for the default demo), which would otherwise delay every first paint of the Forecast screen."""
        import json

        seed, size = self._demo_params()
        key = f"{seed}:{size}:{self.today().isoformat()}"
        cache = self.data_dir / "demo-quotas.json"
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                return list(stored["quotas"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        from connectors.demo import demo_quotas  # the generator: imported only when the cache misses

        quotas = [
            {"owner_id": owner, "quarter": quarter, "amount": str(amount)}
            for (owner, quarter), amount in sorted(demo_quotas(self.today(), seed=seed, size=size).items())
        ]
        from cockpit.export import ExportError, write_atomic

        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, json.dumps({"key": key, "quotas": quotas}).encode(), force=True)
        except (OSError, ExportError) as exc:  # a read-only data dir: compute again next time
            log.info("demo quotas not cached: %s", exc)
        return quotas

    def _demo_params(self) -> tuple[int, int]:
        """(seed, size) of the demo org in the store: as last synced (`--demo-size` may differ from config)."""
        import json

        try:
            synced = json.loads((self.data_dir / DEMO_PARAMS_FILE).read_text(encoding="utf-8"))
            return int(synced["seed"]), int(synced["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.settings.demo.seed, self.settings.demo.size

    def _remember_demo(self, connector: Any) -> None:
        """After a demo sync: note its seed and size, and compute its quotas now, not at first paint."""
        import json

        from cockpit.export import ExportError, write_atomic

        try:
            params = {"seed": int(connector.seed), "size": int(connector.size)}
            write_atomic(self.data_dir / DEMO_PARAMS_FILE, json.dumps(params).encode(), force=True)
        except (AttributeError, OSError, ExportError) as exc:
            log.info("demo parameters not recorded: %s", exc)
            return
        self.__dict__.pop("quota_config", None)
        self.quota_config  # noqa: B018 - computes and caches the quotas

    @cached_property
    def forecast_config(self) -> ForecastConfig:
        """The [forecast] table: currency, rates, thresholds (quotas load separately, see `quota_config`)."""
        return self._forecast_table(with_quotas=False)

    @cached_property
    def quota_config(self) -> ForecastConfig:
        """The [forecast] table with quotas; on the demo CRM without any, the demo org's own."""
        return self._forecast_table(with_quotas=True)

    def fx(self, on: date | None = None) -> Fx:
        """Converter into the reporting currency at the rates in effect on a day (default today)."""
        return self.forecast_config.fx(on or self.today())

    def today(self) -> date:
        """The review's "today": pinned by config/--as-of, else the real date."""
        return self._today or datetime.now(timezone.utc).date()

    def current_quarter(self) -> Quarter:
        return self.calendar.quarter_of(self.today())

    def parse_quarter(self, text: str | None) -> Quarter:
        return self.current_quarter() if not text else self.calendar.parse_quarter(text, self.today())

    @contextmanager
    def store(self, *, create: bool = True) -> Iterator[Store]:
        store = Store.open(self.store_path, create=create)
        try:
            yield store
        finally:
            store.close()

    def view_stamp(self, *parts: str) -> str | None:
        """A key that changes whenever a view of the store could: the store's files (see
        `Store.files_stamp`), the demo's parameters, the settings, today, the cockpit's version and
        `parts` (which view, quarter, scope). None when there is no store yet. Costs a few stat calls."""
        import hashlib
        import json
        import os

        from cockpit import __version__

        files = Store.files_stamp(self.store_path)
        if files is None:
            return None
        try:
            demo = os.stat(self.data_dir / DEMO_PARAMS_FILE).st_mtime_ns
        except OSError:
            demo = 0
        key = [files, demo, self.settings.model_dump_json(), self.today().isoformat(), __version__, *parts]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()

    def paint_path(self, screen: str) -> Path:
        """Where `screen` keeps what it last painted: beside the store, one file per OS user."""
        import hashlib

        user = hashlib.sha256(os_user().encode()).hexdigest()[:12]
        return self.data_dir / f".painted-{screen}-{user}.json"

    def store_is_empty(self) -> bool:
        if not self.store_path.exists():
            return True
        with self.store() as store:
            return store.is_empty()

    # -- sync ----------------------------------------------------------------------------------

    def make_connector(self, name: str | None = None, **overrides: Any):  # noqa: ANN201 - Connector
        """Build the named (or configured) connector with its settings from config."""
        import connectors

        name = name or self.settings.connector
        options: dict[str, Any] = {}
        if name == "demo":
            options = {"seed": self.settings.demo.seed, "size": self.settings.demo.size, "as_of": self.today()}
        elif name == "csv":
            options = {
                "source": self.settings.csv.source,
                "mapping": self.settings.csv.mapping,
                "skip_bad_rows": self.settings.csv.skip_bad_rows,
            }
        else:
            table = dict(self.settings.connectors.get(name, {}))
            self._refuse_secrets_in_config(name, table)
            return connectors.create_from_settings(name, table, connectors.secrets_from_environment(name=name))
        options.update({k: v for k, v in overrides.items() if v is not None})
        if name == "csv" and not options.get("source"):
            raise connectors.ConnectorError(
                "No CSV source", "say where the export is: `cockpit sync --connector csv --source DIR`"
            )
        return connectors.create(name, **options)

    def _refuse_secrets_in_config(self, name: str, table: dict[str, Any]) -> None:
        """Secrets belong in the environment or the keyring; a config holding one must be private."""
        from cockpit.config import check_private

        secretish = [k for k in table if any(w in k.lower() for w in ("password", "secret", "token", "private_key"))]
        if not secretish:
            return
        if self.settings.source_path is not None:
            check_private(self.settings.source_path)
        raise ConfigError(
            "Secret in the config file",
            f"[connectors.{name}] holds {', '.join(secretish)}; remove it and set it as an environment "
            f"variable (COCKPIT_{name.upper()}_...) or in the system keyring instead (see docs/connectors.md)",
        )

    async def sync(
        self,
        connector: Any,
        *,
        source: str | None = None,
        full: bool = False,
        progress: Callable[[SyncProgress], None] | None = None,
    ) -> SyncSummary:
        """Pull batches from the connector into the store, one transaction per batch.

        An interrupted run keeps every batch it finished and is resumed from its cursor next
        time; connectors that sync incrementally resume from the newest cursor of any run.
        """
        started = time.perf_counter()
        with self.store() as store:
            cursor = None
            if not full:
                last = next((r for r in store.sync_runs(50) if r.connector == connector.name and r.source == source), None)
                if getattr(connector, "incremental", False):
                    cursor = store.resume_cursor(connector.name, source)
                elif last is not None and last.status != "ok":
                    cursor = last.cursor
            run_id = store.begin_sync(connector.name, source)
            batches = opportunities = changes = 0
            try:
                async for batch in connector.batches(cursor, progress):
                    store.apply_batch(run_id, batch)
                    batches += 1
                    opportunities += len(batch.opportunities)
                    changes += len(batch.changes)
            except BaseException as exc:
                store.finish_sync(run_id, "interrupted" if not isinstance(exc, Exception) else "failed", str(exc))
                raise
            store.finish_sync(run_id, "ok")
        if connector.name == "demo":
            self._remember_demo(connector)
        return SyncSummary(
            run_id, connector.name, batches, opportunities, changes, time.perf_counter() - started, cursor
        )

    # -- reading -------------------------------------------------------------------------------

    def pipelines(self) -> list[Pipeline]:
        with self.store() as store:
            return store.pipelines()

    def org(self) -> OrgTree:
        with self.store() as store:
            return OrgTree(store.owners())

    def deals(self, flt: DealFilter | None = None, as_of: date | None = None) -> list[DealRow]:
        """Open deals as of a date (default today), in the filter's quarter (default: current)."""
        flt = flt or DealFilter()
        as_of = as_of or self.today()
        quarter = flt.quarter or self.calendar.quarter_of(as_of)
        with self.store(create=False) as store:
            pipelines = {p.id: p for p in store.pipelines()}
            stages = {s.id: (p, s) for p in pipelines.values() for s in p.stages}
            tree = OrgTree(store.owners())
            owner_ids = tree.subtree(tree.find(flt.owner).id) if flt.owner else None
            stage_id = self._resolve_stage(flt.stage, stages, flt.pipeline) if flt.stage else None
            past_due = flt.include_past_due and quarter.contains(as_of)
            snaps = store.snapshot(
                as_of,
                close_from=None if past_due else quarter.start,
                close_before=quarter.end,
                owner_ids=owner_ids,
                pipeline_id=flt.pipeline,
                stage_id=stage_id,
                undated=past_due,
            )
        fx = self.fx(as_of)
        rows = []
        for snap in snaps:
            deal = snap.deal
            pipeline, stage = stages[deal.stage_id]
            rows.append(
                DealRow(
                    snapshot=snap,
                    owner_name=tree.owners[deal.owner_id].name if deal.owner_id in tree.owners else deal.owner_id,
                    stage_name=stage.name,
                    pipeline_name=pipeline.name,
                    category=deal.forecast_category or stage.category,
                    days_in_stage=max(0, (as_of - snap.stage_entered_at.date()).days),
                    amount=fx(deal.amount, deal.currency),
                )
            )
        return rows

    # -- scope and the review call --------------------------------------------------------------

    def default_scope(self, tree: OrgTree) -> str:
        """The configured `scope`, else the single top of the org tree, else everyone."""
        from cockpit.models.submission import ALL_SCOPE

        if self.settings.scope:
            return tree.find(self.settings.scope).id
        roots = tree.roots
        return roots[0] if len(roots) == 1 else ALL_SCOPE

    def resolve_scope(self, text: str | None) -> str:
        """A scope from the command line: an owner or manager by name or id, "all" for everyone;
        None gives the default scope. Raises KeyError naming the unknown owner."""
        from cockpit.models.submission import ALL_SCOPE

        if text is not None and text.strip().casefold() in ("all", "everyone", ALL_SCOPE):
            return ALL_SCOPE
        with self.store(create=False) as store:
            tree = OrgTree(store.owners())
        return tree.find(text).id if text else self.default_scope(tree)

    @staticmethod
    def scope_members(tree: OrgTree, scope: str) -> list[str] | None:
        from cockpit.models.submission import ALL_SCOPE

        if scope == ALL_SCOPE:
            return None
        members = tree.subtree(scope)
        # the top of the org is everyone: no owner filter (the store then reads deals in id order)
        return None if len(members) == len(tree.owners) else members

    def stage_medians(self, store: Store, as_of: date) -> dict[str, Any]:
        """Median days deals spent in each stage (from every history), cached per as-of date."""
        import statistics

        from cockpit.forecast.flags import StageMedian

        cache = self.__dict__.setdefault("_medians", {})
        if as_of not in cache:
            cache[as_of] = {
                stage: StageMedian(statistics.median(days), len(days))
                for stage, days in store.stage_spells(as_of).items()
            }
        return cache[as_of]

    def review_walk(self, quarter: Quarter | None = None, scope: str | None = None, author: str | None = None) -> ReviewWalk:
        """The review call for a quarter and scope: its open deals with scores, flags and what changed,
        resumed from the author's draft if there is one."""
        from cockpit.forecast.flags import flag_deals
        from cockpit.review import ReviewDeal, ReviewWalk
        from cockpit.store.submissions import load_draft

        as_of = self.today()
        quarter = quarter or self.current_quarter()
        author = author or os_user()
        config = self.forecast_config
        with self.store(create=False) as store:
            pipelines = store.pipelines()
            stages = {st.id: st for p in pipelines for st in p.stages}
            tree = OrgTree(store.owners())
            scope = scope or self.default_scope(tree)
            members = self.scope_members(tree, scope)
            past_due = quarter.contains(as_of)
            snaps = store.snapshot(
                as_of, owner_ids=members, close_from=None if past_due else quarter.start, close_before=quarter.end,
                undated=past_due,
            )
            ids = [snap.deal.id for snap in snaps]
            histories = {h.deal.id: h for h in store.histories(ids=ids)}
            scores = store.scores(ids)
            before = {snap.deal.id: snap for snap in store.snapshot(as_of - timedelta(days=7), ids=ids,
                                                                     open_only=False)}
            medians = self.stage_medians(store, as_of)
            draft = load_draft(store.conn, quarter.label, scope, author)
        flags = {f.opportunity_id: f for f in flag_deals(snaps, as_of, stages=stages, config=config,
                                                         medians=medians, histories=histories)}
        fx = self.fx(as_of)
        deals = {}
        for snap in snaps:
            deal = snap.deal
            stage = stages[deal.stage_id]
            median = medians.get(deal.stage_id)
            history = histories.get(deal.id)
            deals[deal.id] = ReviewDeal(
                id=deal.id,
                name=deal.name,
                account=deal.account,
                owner_id=deal.owner_id,
                owner_name=tree.owners[deal.owner_id].name if deal.owner_id in tree.owners else deal.owner_id,
                pipeline_id=deal.pipeline_id,
                stage_id=deal.stage_id,
                stage_name=stage.name,
                amount=deal.amount,
                currency=deal.currency,
                value=fx(deal.amount, deal.currency),
                fx_rate=fx.rate(deal.currency),
                close_date=deal.close_date,
                close_date_pushes=snap.close_date_pushes,
                rep_category=config.category(deal, stage),
                crm_probability=float(deal.probability if deal.probability is not None else stage.probability),
                days_in_stage=max(0, (as_of - snap.stage_entered_at.date()).days),
                stage_median_days=median.days if median is not None else None,
                next_step=deal.next_step,
                next_step_date=deal.next_step_date,
                last_activity=deal.last_activity,
                score=scores.get(deal.id),
                flags=tuple(f.message for f in flags[deal.id].flags) if deal.id in flags else (),
                changed=describe_changes(before.get(deal.id), snap, stages, config),
                timeline=stage_timeline(history, stages) if history else (),
            )
        return ReviewWalk.resume(
            draft, quarter=quarter.label, scope=scope, author=author, currency=config.reporting_currency,
            pipelines=pipelines, deals=deals,
        )

    def save_draft(self, draft: Draft) -> None:
        """Write the review's draft (one small transaction); called after every call in the review."""
        from cockpit.store.submissions import save_draft

        with self.store() as store:
            save_draft(store.conn, draft)

    # -- the forecast -------------------------------------------------------------------------

    def outcomes(self, store: Store) -> list[Any]:
        """Every won deal's creation, win and booking (for run-rates and actuals), read once per service."""
        from cockpit.forecast.runrate import DealOutcome

        cached = self.__dict__.get("_outcomes")
        if cached is None:
            cached = [
                DealOutcome(
                    opportunity_id=r[0], owner_id=r[1], pipeline_id=r[2],
                    created_at=from_us(r[3]), won_at=from_us(r[4]), booked_on=date.fromisoformat(r[5]),
                    amount=Decimal(r[6]), currency=r[7],
                )
                for r in store.won_deal_outcomes()
            ]
            self.__dict__["_outcomes"] = cached
        return cached

    def forecast_view(self, quarter: Quarter | None = None, scope: str | None = None) -> ForecastView:
        """The quarter at a glance for a scope: roll-up, the model's range, funnel, sources, last submission."""
        from cockpit.forecast.rollup import rollup
        from cockpit.forecast.runrate import learn_run_rate, same_point
        from cockpit.store.submissions import latest_submissions, list_submissions
        from cockpit.views import by_lead_source, funnel

        as_of = self.today()
        quarter = quarter or self.current_quarter()
        config = self.quota_config
        with self.store(create=False) as store:
            pipelines = store.pipelines()
            tree = OrgTree(store.owners())
            scope = scope or self.default_scope(tree)
            members = self.scope_members(tree, scope)
            snaps = store.snapshot(as_of, owner_ids=members, closed_from=quarter.start)
            then_day = same_point(quarter, as_of, quarter.previous())
            then = store.snapshot(then_day, owner_ids=members)
            probabilities = store.probabilities([s.deal.id for s in snaps if not s.deal.is_closed]) or None
            outcomes = self.outcomes(store)
            first_record = store.first_record()
            history = list_submissions(store.conn, quarter.label, scope)
            team = latest_submissions(store.conn, quarter.label, tree.subtree(scope)) if scope in tree.owners else {}
        run_rate = learn_run_rate(outcomes, quarter, as_of, config, owner_ids=members, first_record=first_record)
        roll = rollup(
            snaps, quarter, as_of=as_of, pipelines=pipelines, tree=tree, config=config,
            scope=None if scope == _all_scope() else scope, probabilities=probabilities, run_rate=run_rate,
        )
        values = {d.opportunity_id: d.value for d in roll.deals}
        sources = {s.deal.id: s.deal.lead_source or "unknown" for s in snaps}
        quarter_open = [d for d in roll.deals if d.in_quarter and not d.won]
        return ForecastView(
            rollup=roll,
            scope=scope,
            scope_name=tree.owners[scope].name if scope in tree.owners else "Everyone",
            funnel=funnel(pipelines, snaps, then, values),
            sources=by_lead_source((d.value, sources.get(d.opportunity_id, "unknown")) for d in quarter_open),
            last_submission=history[-1] if history else None,
            previous_submission=history[-2] if len(history) > 1 else None,
            team_submissions=team,
            run_rate=run_rate,
            scored=probabilities is not None,
            tree=tree,
        )

    def changes_view(self, quarter: Quarter | None = None, scope: str | None = None,
                     since: date | None = None) -> ChangesView:
        """What moved the quarter's open pipeline between `since` (default: the last submission, else a
        week ago) and today: a waterfall that balances to the cent, each bucket with its deals."""
        from cockpit.forecast.changes import changes_since, default_since
        from cockpit.forecast.rollup import rollup
        from cockpit.store.submissions import list_submissions

        end = self.today()
        quarter = quarter or self.current_quarter()
        with self.store(create=False) as store:
            tree = OrgTree(store.owners())
            scope = scope or self.default_scope(tree)
            members = self.scope_members(tree, scope)
            history = list_submissions(store.conn, quarter.label, scope)
            start = since or default_since(end, history[-1].created_at if history else None)
            after = store.snapshot(end, owner_ids=members, closed_from=start)
            # Only the deals with history rows in the window can have moved: read just those as they
            # stood on start (every deal in scope then is in `after`: closed since start included).
            moved = store.changed_between(start, end, owner_ids=members)
            before = store.snapshot(start, open_only=False, ids=[s.deal.id for s in after if s.deal.id in moved])
            pipelines = store.pipelines()
            stages = store.stages()
        roll = rollup(after, quarter, as_of=end, pipelines=pipelines, tree=tree, config=self.forecast_config,
                      scope=None if members is None else scope)
        waterfall = changes_since(roll, before, start=start, stages=stages, config=self.forecast_config, moved=moved)
        names = {o: tree.owners[o].name for o in tree.owners}
        return ChangesView(waterfall=waterfall, scope=scope,
                           scope_name=names.get(scope, "Everyone"), owner_names=names)

    # -- committing ----------------------------------------------------------------------------

    def commit_preview(self, walk: ReviewWalk, manager_number: Decimal | None = None, reason: str = "") -> CommitPreview:
        """The submission the walk's calls would make (validated), beside the last one and the team's."""
        from cockpit.forecast.submissions import lines_from_rollup, make_submission, rollup_submissions
        from cockpit.models.submission import ALL_SCOPE
        from cockpit.store.submissions import latest_submissions, list_submissions

        quarter = self.calendar.parse_quarter(walk.quarter)
        view = self.forecast_view(quarter, walk.scope)
        roll = view.rollup
        calls = dict(walk.lines)
        lines = [calls.get(line.opportunity_id, line) for line in lines_from_rollup(roll, self.quota_config)]
        model = self.load_model(quiet=True)
        draft = make_submission(
            roll, lines, author=walk.author, manager_number=manager_number, reason=reason,
            model_version=model.version if model is not None else "",
        )
        with self.store(create=False) as store:
            history = list_submissions(store.conn, walk.quarter, walk.scope)
            team = None
            if walk.scope != ALL_SCOPE and view.tree.is_manager(walk.scope):
                latest = latest_submissions(store.conn, walk.quarter, view.tree.subtree(walk.scope))
                team = rollup_submissions(view.tree, walk.scope, walk.quarter, latest)
        return CommitPreview(submission=draft, previous=history[-1] if history else None, team=team,
                             scope_name=view.scope_name)

    def submit(self, walk: ReviewWalk, manager_number: Decimal | None, reason: str) -> Any:
        """Append the submission (one transaction; never edited later) and clear the walk's draft."""
        from cockpit.store.submissions import append_submission, delete_draft

        submission = self.commit_preview(walk, manager_number, reason).submission
        with self.store() as store:
            with store.transaction():
                new_id = append_submission(store.conn, submission)
                delete_draft(store.conn, walk.quarter, walk.scope, walk.author)
        return submission.model_copy(update={"id": new_id})

    def default_export_path(self, submission: Any, fmt: str) -> Path:
        """~/cockpit-exports/FY2026-Q4_<scope>_<id>.toml (or the configured export_dir)."""
        folder = self.settings.export_dir or Path.home() / "cockpit-exports"
        scope = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in submission.scope)
        return Path(folder).expanduser() / f"{submission.quarter}_{scope}_{submission.id}.{fmt}"

    def export(self, submission: Any, fmt: str, path: Path, *, force: bool = False) -> Path:
        """Write a submission as TOML or CSV, atomically; an existing file needs force."""
        from cockpit.export import write_submission_csv, write_submission_toml

        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "toml":
            return write_submission_toml(submission, path, force=force)
        if fmt == "csv":
            return write_submission_csv(submission, path, force=force)
        raise ValueError(f"unknown export format {fmt!r}; use toml or csv")

    # -- history -------------------------------------------------------------------------------

    def history_view(self, scope: str | None = None) -> HistoryView:
        """Past submissions of a scope with their accuracy once their quarter closed, and the latest backtest."""
        from cockpit.models.submission import ALL_SCOPE
        from cockpit.store.submissions import list_submissions

        today = self.today()
        with self.store(create=False) as store:
            tree = OrgTree(store.owners())
            scope = scope or self.default_scope(tree)
            subs = list_submissions(store.conn, scope=scope)
            outcomes = self.outcomes(store)
            backtest = store.latest_backtest(scope)
        members = None if scope == ALL_SCOPE else set(tree.subtree(scope))
        rows = []
        for sub in reversed(subs):
            quarter = self.calendar.parse_quarter(sub.quarter)
            actual = None
            if quarter.end <= today:
                fx = self.forecast_config.fx(quarter.last_day)
                actual = sum(
                    (fx(o.amount, o.currency) for o in outcomes
                     if o.booked_on is not None and quarter.contains(o.booked_on)
                     and (members is None or o.owner_id in members)),
                    Decimal(0),
                )
            rows.append(SubmissionAccuracy(sub, actual))
        return HistoryView(scope=scope, scope_name=tree.owners[scope].name if scope in tree.owners else "Everyone",
                           rows=rows, backtest=backtest)

    # -- flags and backtest --------------------------------------------------------------------

    def flags(self, quarter: Quarter | None = None, scope: str | None = None) -> list[Any]:
        """Risk and hygiene flags of today's open deals in scope; with a quarter, only deals closing
        by its end (past-due and undated ones included: they need fixing before the call)."""
        from cockpit.forecast.flags import flag_deals

        as_of = self.today()
        with self.store(create=False) as store:
            tree = OrgTree(store.owners())
            scope = scope or self.default_scope(tree)
            members = self.scope_members(tree, scope)
            snaps = store.snapshot(as_of, owner_ids=members)
            stages = store.stages()
            histories = {h.deal.id: h for h in store.histories(ids=[s.deal.id for s in snaps])}
            medians = self.stage_medians(store, as_of)
        flagged = flag_deals(snaps, as_of, stages=stages, config=self.forecast_config, medians=medians,
                             histories=histories)
        if quarter is not None:
            flagged = [f for f in flagged if f.close_date is None or f.close_date < quarter.end]
        return flagged

    def backtest(
        self,
        quarters: int = 4,
        scope: str | None = None,
        *,
        method: str = "model",
        progress: Callable[[str, float], None] | None = None,
    ) -> BacktestRun:
        """Replay the last `quarters` closed quarters week by week and store the report.

        method "model": the win model retrained on what was known before each quarter began (a
        quarter with too little earlier history uses the in-quarter rates instead, and says so);
        "rates": the in-quarter rates learned from earlier quarters (fast).
        """
        from cockpit.forecast.backtest import backtest, past_quarters
        from cockpit.forecast.baseline import InQuarterRates
        from cockpit.forecast.deals import stage_index
        from cockpit.store.submissions import list_submissions

        if method not in ("model", "rates"):
            raise ValueError(f"unknown backtest method {method!r}; use model or rates")
        say = progress or (lambda message, fraction: None)
        started = time.perf_counter()
        today = self.today()
        config = self.quota_config
        with self.store(create=False) as store:
            histories = list(store.histories())
            pipelines, owners = store.pipelines(), store.owners()
            tree = OrgTree(owners)
            scope = scope or self.default_scope(tree)
            submissions = list_submissions(store.conn, scope=scope)
        members = self.scope_members(tree, scope)
        wanted = past_quarters(self.calendar, today, quarters)
        stages = stage_index(pipelines)
        @cache
        def in_quarter_rates() -> InQuarterRates:  # built on first use: the model method may never need it
            return InQuarterRates(histories, stages, self.calendar, fx=config.fx(today))

        by_id = {h.deal.id: h for h in histories}
        used: dict[str, str] = {}
        models: dict[str, Any] = {}

        def model_for(quarter: Quarter) -> Any:
            from cockpit.scoring import TrainingError, train

            if quarter.label not in models:
                done = len(models) / len(wanted)
                say(f"Training the model as of {quarter.start - timedelta(days=1)} for {quarter.label}", done)
                try:
                    models[quarter.label] = train(
                        histories, pipelines, owners, self.calendar, self.scoring_config,
                        as_of=quarter.start - timedelta(days=1),
                    ).model
                    used[quarter.label] = "model"
                except TrainingError as exc:
                    log.info("backtest %s: %s", quarter.label, exc)
                    models[quarter.label] = None
                    used[quarter.label] = "rates (too little history for the model)"
            return models[quarter.label]

        def probabilities_at(on: date, snaps: Any) -> dict[str, float]:
            quarter = self.calendar.quarter_of(on)
            model = model_for(quarter) if method == "model" else None
            if model is None:
                used.setdefault(quarter.label, "rates")
                return in_quarter_rates()(on, snaps)
            scores = model.score([by_id[s.deal.id] for s in snaps if not s.deal.is_closed], on, reasons=False)
            return {sc.opportunity_id: sc.p_in_quarter for sc in scores}

        report = backtest(
            histories, pipelines, self.calendar, config, probabilities_at=probabilities_at, quarters=wanted,
            owner_ids=members, submissions=submissions, scope=scope, tree=tree,
        )
        say("Done", 1.0)
        record = report.to_dict()
        record["method"] = {q.label: used.get(q.label, method) for q in wanted}
        with self.store() as store:
            store.record_backtest(scope, record)
        return BacktestRun(report, record["method"], scope, time.perf_counter() - started)

    # -- one deal's story ----------------------------------------------------------------------

    @property
    def model_path(self) -> Path:
        return self.data_dir / "model.npz"

    def deal_story(self, deal_id: str) -> DealStory:
        """Everything that happened to one deal, and its win chance week by week."""
        with self.store(create=False) as store:
            [history] = list(store.histories(ids=[deal_id])) or [None]
            if history is None:
                raise KeyError(f"no deal with id {deal_id!r} in the store")
            stages = store.stages()
            tree = OrgTree(store.owners())
            score = store.scores([deal_id]).get(deal_id)
        deal = history.deal
        events: list[tuple[date, str]] = []
        prev = None
        for change in history.changes:
            day = change.changed_at.date()
            name = stages[change.stage_id].name if change.stage_id in stages else change.stage_id
            if prev is None:
                events.append((day, f"created in {name}, {change.amount:,.0f} {deal.currency}, close {change.close_date or '–'}"))
            else:
                if change.stage_id != prev.stage_id:
                    old = stages[prev.stage_id]
                    arrow = "→" if stages[change.stage_id].order >= old.order else "← back to"
                    events.append((day, f"{old.name} {arrow} {name}"))
                if change.amount != prev.amount:
                    events.append((day, f"amount {prev.amount:,.0f} → {change.amount:,.0f} {deal.currency}"))
                if change.close_date != prev.close_date:
                    verb = "pushed" if (prev.close_date and change.close_date and change.close_date > prev.close_date) else "moved"
                    events.append((day, f"close date {verb} {prev.close_date or '–'} → {change.close_date or '–'}"))
                if change.forecast_category != prev.forecast_category and change.forecast_category:
                    events.append((day, f"rep's category → {change.forecast_category.label}"))
            prev = change
        for day in history.activities:
            events.append((day, "activity logged"))
        events.sort(key=lambda e: e[0])
        events = _fold_activities(events)
        weekly = self._weekly_probabilities(history, stages)
        return DealStory(
            deal=deal,
            owner_name=tree.owners[deal.owner_id].name if deal.owner_id in tree.owners else deal.owner_id,
            stage_name=stages[deal.stage_id].name if deal.stage_id in stages else deal.stage_id,
            events=events,
            weekly=weekly,
            score=score,
        )

    def _weekly_probabilities(self, history: Any, stages: dict[str, Any]) -> list[tuple[date, float, float | None]]:
        """(week, CRM stage probability, model's eventual probability) from creation to today or close."""
        from cockpit.models import snapshot_of

        changes = history.changes
        if not changes:
            return []
        start = changes[0].changed_at.date()
        end = min(self.today(), history.deal.closed_at.date()) if history.deal.closed_at else self.today()
        days = [start + timedelta(days=7 * k) for k in range(max(1, (end - start).days // 7 + 1))]
        model = self.load_model(quiet=True)
        out = []
        for day in days:
            snap = snapshot_of(history, day, stages)
            if snap is None:
                continue
            crm = float(stages[snap.deal.stage_id].probability)
            p = None
            if model is not None and not snap.deal.is_closed:
                scored = model.score([history], day, reasons=False)
                p = scored[0].p_won if scored else None
            out.append((day, crm, p))
        return out

    # -- the win model -------------------------------------------------------------------------

    @cached_property
    def scoring_config(self) -> Any:
        """The [scoring] table: features switched off and thresholds (a bad value is a ConfigError)."""
        from cockpit.scoring import ScoringConfig

        try:
            return ScoringConfig.from_mapping(self.settings.scoring)
        except ValueError as exc:
            raise ConfigError("Config has errors", str(exc)) from None

    def train(self, progress: Callable[[str, float], None] | None = None) -> ModelRun:
        """Train the win model on every closed deal's history, save it, record the run, score open deals.

        Raises TrainingError when there is too little history (the old model and scores stay).
        """
        from cockpit.scoring import save_model, train

        say = progress or (lambda message, fraction: None)
        started = time.perf_counter()
        config = self.scoring_config
        with self.store(create=False) as store:
            histories = list(store.histories())
            pipelines, owners = store.pipelines(), store.owners()
        result = train(
            histories, pipelines, owners, self.calendar, config,
            progress=lambda message, fraction: fraction < 1 and say(message, 0.85 * fraction), as_of=self.today(),
        )
        save_model(result.model, self.model_path)
        self.__dict__["_model"] = result.model
        report = result.report
        with self.store() as store:
            store.record_model_run(result.model.version, report.chosen, report.to_dict())
        say("Scoring open deals", 0.9)
        # the model was trained on these closed deals today: its past win rates are current
        scored = self._score_open(result.model, _open_columns(histories), owners)
        say("Done", 1.0)
        log.info("trained %s on %d closed deals; scored %d open deals", result.model.version, report.closed_deals, scored)
        return ModelRun(result.model.version, report, scored, time.perf_counter() - started, retrained=True)

    def score(self) -> ModelRun:
        """Score the open deals with the saved model; raises ModelFileError when there is none."""
        started = time.perf_counter()
        model = self.load_model()
        with self.store(create=False) as store:
            histories = list(store.histories())
            owners = store.owners()
        closed = [h for h in histories if h.deal.is_closed]
        scored = self._score_open(model, _open_columns(histories), owners, closed=closed)
        return ModelRun(model.version, None, scored, time.perf_counter() - started, retrained=False)

    def refresh_model(self, progress: Callable[[str, float], None] | None = None) -> ModelRun:
        """After a sync: score with the saved model, or retrain when there is none or it learned other data.

        A model whose fingerprint (the closed deals it learned from) no longer matches the store is
        refused and retrained: new outcomes are what the model learns from.
        """
        from cockpit.scoring import ModelFileError, load_model
        from cockpit.scoring.files import fingerprint_of

        say = progress or (lambda message, fraction: None)
        started = time.perf_counter()
        with self.store(create=False) as store:
            fingerprint = fingerprint_of(store.closed_deal_facts())
        try:
            model = load_model(self.model_path, expected_fingerprint=fingerprint)
        except ModelFileError as exc:
            log.info("retraining: %s", exc)
            say(f"{exc.title}: retraining", 0.0)
            return self.train(progress)
        self.__dict__["_model"] = model
        say("Scoring open deals", 0.5)
        # Same closed deals as at training: the past win rates the model holds are still right,
        # so only the open deals are read.
        with self.store(create=False) as store:
            open_ = store.history_columns(closed=False)
            owners = store.owners()
        scored = self._score_open(model, open_, owners)
        say("Done", 1.0)
        return ModelRun(model.version, None, scored, time.perf_counter() - started, retrained=False)

    def _score_open(self, model: Any, open_: HistoryColumns, owners: list[Any], *, closed: list[Any] | None = None) -> int:
        """Score today's open deals (`HistoryColumns`) and store the scores; `closed` (the deals closed
        so far) refreshes the past win rates, which are otherwise the model's own."""
        scores = model.score_columns(open_, self.today(), closed=closed, owners=owners)
        with self.store() as store:
            return store.write_score_columns(scores)

    def scores(self, ids: list[str] | None = None) -> dict[str, DealScore]:
        """Stored scores (all, or of these deals)."""
        with self.store(create=False) as store:
            return store.scores(ids)

    def load_model(self, *, quiet: bool = False) -> Any:
        """The trained win model in the data dir (cached), or None when there is none and `quiet`."""
        from cockpit.scoring import ModelFileError, load_model

        cached = self.__dict__.get("_model")
        if cached is not None:
            return cached
        try:
            model = load_model(self.model_path)
        except ModelFileError:
            if quiet:
                return None
            raise
        self.__dict__["_model"] = model
        return model

    @staticmethod
    def _resolve_stage(text: str, stages: dict[str, tuple[Pipeline, Any]], pipeline: str | None) -> str:
        if text in stages:
            return text
        low = text.casefold()
        hits = [sid for sid, (p, s) in stages.items() if s.name.casefold() == low and (not pipeline or p.id == pipeline)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            names = sorted({s.name for _, s in stages.values()})
            raise KeyError(f"no stage called {text!r}; stages: {', '.join(names)}")
        raise KeyError(f"stage {text!r} exists in several pipelines ({', '.join(hits)}); give its id or --pipeline")


def _open_columns(histories: list[DealHistory]) -> HistoryColumns:
    """The open deals among `histories`, as the columns the win model scores."""
    from cockpit.models.columns import HistoryColumns  # numpy: not on the start-up path

    return HistoryColumns.of([h for h in histories if not h.deal.is_closed])


# -- the review call ----------------------------------------------------------------------------


def os_user() -> str:
    """The author of drafts and submissions: the operating-system user."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): fall back to the uid
        import os

        return f"uid-{os.getuid()}"


def describe_changes(before: DealSnapshot | None, now: DealSnapshot, stages: dict[str, Any], config: Any) -> tuple[str, ...]:
    """What changed on a deal between two snapshots, in words ("new", "stage Proposal → Negotiation", ...)."""
    if before is None:
        return ("new this week",)
    a, b = before.deal, now.deal
    out = []
    if a.stage_id != b.stage_id:
        sa, sb = stages[a.stage_id], stages[b.stage_id]
        arrow = "forward" if sb.order > sa.order else "back"
        out.append(f"stage {arrow}: {sa.name} → {sb.name}")
    if a.amount != b.amount:
        out.append(f"amount {'up' if b.amount > a.amount else 'down'}: {a.amount:,.0f} → {b.amount:,.0f} {b.currency}")
    if a.close_date != b.close_date:
        verb = "pushed" if (a.close_date and b.close_date and b.close_date > a.close_date) else "moved"
        out.append(f"close date {verb}: {a.close_date or '–'} → {b.close_date or '–'}")
    ca, cb = config.category(a, stages[a.stage_id]), config.category(b, stages[b.stage_id])
    if ca != cb:
        out.append(f"category {ca.label} → {cb.label}")
    return tuple(out)


def stage_timeline(history: Any, stages: dict[str, Any]) -> tuple[tuple[date, str], ...]:
    """(day, stage name) for every stage the deal entered, oldest first."""
    out: list[tuple[date, str]] = []
    last = None
    for change in history.changes:
        if change.stage_id != last:
            out.append((change.changed_at.date(), stages[change.stage_id].name if change.stage_id in stages else change.stage_id))
            last = change.stage_id
    return tuple(out)


def _fold_activities(events: list[tuple[date, str]]) -> list[tuple[date, str]]:
    """Runs of activity dates between two real changes become one line ("4 activities, to 2026-10-12")."""
    out: list[tuple[date, str]] = []
    run: list[date] = []

    def flush() -> None:
        if len(run) == 1:
            out.append((run[0], "activity logged"))
        elif run:
            out.append((run[0], f"{len(run)} activities logged, the last on {run[-1]}"))
        run.clear()

    for day, text in events:
        if text == "activity logged":
            run.append(day)
            continue
        flush()
        out.append((day, text))
    flush()
    return out


def _all_scope() -> str:
    from cockpit.models.submission import ALL_SCOPE

    return ALL_SCOPE


