"""The demo CRM: a seeded simulation of a B2B sales organisation.

The cockpit uses it by default, so it is the first thing a new user sees. It is a simulation, not
canned data: every deal is played week by week from its creation, with hazards (advance, win, lose,
move back) that depend on a hidden deal quality and on what a CRM can see: time in stage, close-date
pushes, backward moves, weeks without activity, stage, team, lead source, the rep's skill and the week
of the quarter. Each deal's trajectory is cut at `as_of`: deals that had not closed by then are open in
the stage they were in, and no history row or activity lies after that day. Any earlier date can be
reconstructed from the history.

The organisation: a VP over five managers over the reps (25 at the default size, about one per 200
deals beyond), in two teams, "Key accounts" (大客户部: bigger deals, longer cycles) and "Direct"
(more, smaller, faster deals). Reps in China sell in CNY and reps elsewhere in USD; names and accounts
follow the rep's region. Three pipelines: new business, renewal and expansion.

Determinism and streaming: deal `i` draws only from its own `random.Random`, seeded with a stable hash
of (seed, i), so the same seed and `as_of` give byte-identical batches, any batch can be produced
without the ones before it (resuming from a cursor is cheap), and memory stays bounded by one batch
whatever the size.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import gc
import hashlib
import math
import random
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import NamedTuple, TypeVar

from pydantic import BaseModel

from cockpit.models import (
    Activity,
    FiscalCalendar,
    ForecastCategory,
    Opportunity,
    Owner,
    Pipeline,
    Stage,
    StageChange,
    SyncBatch,
    SyncProgress,
)
from cockpit.models.trusted import construct_trusted
from connectors import ConnectorError, ProgressCallback
from connectors._demo_fx import DEMO_REPORTING_CURRENCY, demo_fx_rates

__all__ = [
    "DEMO_FISCAL_START_MONTH",
    "DEMO_REPORTING_CURRENCY",
    "DemoConnector",
    "demo_fx_rates",
    "demo_owners",
    "demo_pipelines",
    "demo_quotas",
]

DEMO_FISCAL_START_MONTH = 1
"""The demo org's fiscal year starts in January: its quarters are calendar quarters."""

MAX_SIZE = 1_000_000
"""Largest number of deals the demo generates."""

KEY_ACCOUNTS = "Key accounts"
"""Team label of the key-account reps (大客户部)."""
DIRECT = "Direct"
"""Team label of the direct (volume) reps."""

_CENT = Decimal("0.01")
_DAY = 86_400
_MAX_WEEKS = 104
"""A deal still open after two years is cleaned up (closed lost) by the sales-ops purge."""


# --------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------

_P, _B, _C = ForecastCategory.PIPELINE, ForecastCategory.BEST_CASE, ForecastCategory.COMMIT


def _pipeline(
    pid: str, name: str, prefix: str, open_stages: Sequence[tuple[str, str, str, ForecastCategory]]
) -> Pipeline:
    """A pipeline from its open stages (id suffix, name, probability, category) plus won and lost."""
    stages = [
        Stage(id=f"{prefix}-{sid}", name=label, order=i, probability=Decimal(prob), category=cat)
        for i, (sid, label, prob, cat) in enumerate(open_stages)
    ]
    n = len(stages)
    stages.append(
        Stage(
            id=f"{prefix}-won",
            name="Closed Won",
            order=n,
            probability=Decimal("1"),
            category=ForecastCategory.CLOSED,
            is_closed=True,
            is_won=True,
        )
    )
    stages.append(
        Stage(
            id=f"{prefix}-lost",
            name="Closed Lost",
            order=n + 1,
            probability=Decimal("0"),
            category=ForecastCategory.OMITTED,
            is_closed=True,
        )
    )
    return Pipeline(id=pid, name=name, stages=tuple(stages))


_PIPELINES: tuple[Pipeline, ...] = (
    _pipeline(
        "new-business",
        "New business",
        "nb",
        [
            ("qualify", "Qualify", "0.10", _P),
            ("discovery", "Discovery", "0.20", _P),
            ("solution", "Solution design", "0.40", _B),
            ("proposal", "Proposal", "0.60", _B),
            ("negotiation", "Negotiation", "0.80", _C),
            ("contract", "Contract", "0.90", _C),
        ],
    ),
    _pipeline(
        "renewal",
        "Renewal",
        "rn",
        [
            ("due", "Renewal due", "0.60", _P),
            ("quote", "Quote sent", "0.80", _B),
            ("verbal", "Verbal commit", "0.95", _C),
        ],
    ),
    _pipeline(
        "expansion",
        "Expansion",
        "ex",
        [
            ("identify", "Identify", "0.20", _P),
            ("scope", "Scope", "0.40", _B),
            ("proposal", "Proposal", "0.70", _B),
            ("commit", "Commit", "0.90", _C),
        ],
    ),
)


def demo_pipelines() -> list[Pipeline]:
    """The demo CRM's three pipelines: new business, renewal, expansion (stage ids unique across them)."""
    return list(_PIPELINES)


@dataclass(frozen=True, slots=True)
class _Funnel:
    """How deals move through one pipeline: weekly base hazards per open stage, in funnel order."""

    pipeline: Pipeline
    deal_type: str
    open_ids: tuple[str, ...]
    won_id: str
    lost_id: str
    categories: tuple[int, ...]
    """Default forecast category per open stage as 0 pipeline, 1 best case, 2 commit."""
    advance: tuple[float, ...]
    """Weekly chance to move to the next stage (the last stage advances only by winning)."""
    win: tuple[float, ...]
    """Weekly chance to close won straight from this stage."""
    lose: tuple[float, ...]
    """Weekly chance to be closed lost from this stage."""
    lose_dark: float
    """Extra weekly chance per week gone dark that the rep finally marks the deal lost."""
    back: tuple[float, ...]
    """Weekly chance to move back a stage."""
    grace: dict[str, int]
    """Weeks per stage before a deal counts as stalling, by team."""
    date_driven: bool
    """Renewals close around their renewal date: hazards rise as the close date nears."""
    cycle_weeks: dict[str, tuple[int, int]]
    """Range the rep picks the first close date from, in weeks after creation, by team."""
    price_stage: int
    """Open stage at which the deal is priced (entering it often revises the amount)."""
    base: float
    """Log-odds shift of every deal in the pipeline (renewing customers mostly renew)."""


def _funnel(
    pipeline: Pipeline,
    deal_type: str,
    *,
    advance: tuple[float, ...],
    win: tuple[float, ...],
    lose: tuple[float, ...],
    lose_dark: float,
    back: tuple[float, ...],
    grace: dict[str, int],
    date_driven: bool,
    cycle_weeks: dict[str, tuple[int, int]],
    price_stage: int,
    base: float,
) -> _Funnel:
    """A pipeline's dynamics; stage ids, won/lost and default categories come from the pipeline."""
    open_stages = pipeline.open_stages
    won, lost = pipeline.won_stage, pipeline.lost_stage
    assert won is not None and lost is not None, f"pipeline {pipeline.id} needs won and lost stages"
    assert len(advance) == len(win) == len(lose) == len(back) == len(open_stages), pipeline.id
    cats = {_P: 0, _B: 1, _C: 2}
    return _Funnel(
        pipeline=pipeline,
        deal_type=deal_type,
        open_ids=tuple(s.id for s in open_stages),
        won_id=won.id,
        lost_id=lost.id,
        categories=tuple(cats[s.category] for s in open_stages),
        advance=advance,
        win=win,
        lose=lose,
        lose_dark=lose_dark,
        back=back,
        grace=grace,
        date_driven=date_driven,
        cycle_weeks=cycle_weeks,
        price_stage=price_stage,
        base=base,
    )


_NB, _RN, _EX = _PIPELINES
_FUNNELS: tuple[_Funnel, ...] = (
    _funnel(
        _NB,
        "New Business",
        advance=(0.30, 0.27, 0.25, 0.24, 0.22, 0.0),
        win=(0.0, 0.0, 0.0, 0.006, 0.04, 0.30),
        lose=(0.08, 0.055, 0.045, 0.04, 0.055, 0.07),
        lose_dark=0.02,
        back=(0.0, 0.012, 0.016, 0.02, 0.026, 0.03),
        grace={KEY_ACCOUNTS: 7, DIRECT: 4},
        date_driven=False,
        cycle_weeks={KEY_ACCOUNTS: (8, 22), DIRECT: (3, 8)},
        price_stage=3,
        base=0.0,
    ),
    _funnel(
        _RN,
        "Renewal",
        advance=(0.12, 0.16, 0.0),
        win=(0.01, 0.08, 0.30),
        lose=(0.02, 0.015, 0.012),
        lose_dark=0.01,
        back=(0.0, 0.012, 0.012),
        grace={KEY_ACCOUNTS: 8, DIRECT: 6},
        date_driven=True,
        cycle_weeks={KEY_ACCOUNTS: (10, 16), DIRECT: (6, 12)},
        price_stage=1,
        base=1.6,
    ),
    _funnel(
        _EX,
        "Expansion",
        advance=(0.26, 0.24, 0.22, 0.0),
        win=(0.0, 0.0, 0.04, 0.30),
        lose=(0.08, 0.06, 0.05, 0.045),
        lose_dark=0.018,
        back=(0.0, 0.012, 0.016, 0.015),
        grace={KEY_ACCOUNTS: 6, DIRECT: 4},
        date_driven=False,
        cycle_weeks={KEY_ACCOUNTS: (6, 16), DIRECT: (3, 8)},
        price_stage=2,
        base=0.0,
    ),
)

# How the hidden log-odds of a deal move its weekly chances, and what the CRM-visible history does to
# them. A deal's log-odds z = its base (quality, rep, source, industry, size) minus these penalties.
_STALL_PENALTY = 0.14
"""Per week in the current stage beyond the stage's grace period."""
_PUSH_PENALTY = 0.35
"""Per close-date push so far."""
_BACK_PENALTY = 0.5
"""Per backward stage move so far."""
_SILENCE_PENALTY = 0.1
"""Per week without a logged activity (counted up to 8)."""
_DARK_PENALTY = 1.2
"""While the buyer has gone quiet."""
_ADVANCE_SLOPE = 0.45
"""Advance and win chances scale with exp(slope * z)."""
_LOSE_SLOPE = 0.55
"""Lose chances scale with exp(-slope * z)."""
_TEAM_SPEED = {KEY_ACCOUNTS: 0.33, DIRECT: 0.55}
"""Multiplier of every weekly chance by team: key-account deals move slower."""
_FAST_SPEED = 3.0
"""Extra speed of the small inbound deals that close within weeks."""
_FAST_SHARE = 0.85
"""Share of small inbound direct new-business deals on that fast lane (and 60 % of that of expansions)."""

_GROWTH = 0.35
"""New deals per day rise linearly over the window: the last day sees 35 % more than the first."""
_GO_LIVE_SHARE = 0.06
"""Share of the deals imported on the first day of the window (the open pipeline at CRM go-live)."""
_PUSH_WEEKS = (1, 3)
"""A pushed close date lands this many weeks out (or at the month end after that, or the next quarter end)."""
_PROACTIVE_PUSH = 0.5
"""Weekly chance the rep pushes a close date due within 10 days on a deal that is not in a late stage."""
_PULL_IN = 0.12
"""Weekly chance, late in a quarter, that a late-stage deal is pulled into the quarter."""

_CATEGORIES = (ForecastCategory.PIPELINE, ForecastCategory.BEST_CASE, ForecastCategory.COMMIT)

# --------------------------------------------------------------------------------------------------
# Words: names, accounts, industries, next steps
# --------------------------------------------------------------------------------------------------

_CN_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐"
_CN_GIVEN = (
    "磊 娜 伟 芳 敏 静 强 洋 艳 杰 娟 涛 明 超 霞 平 刚 婷 浩 晨 思远 子涵 雨桐 建华 海燕 志强 "
    "晓东 丽华 文博 嘉怡 俊杰 欣然 国栋 春梅 宇航 梦琪"
).split()
_CN_GIVEN_CHARS = "文华建国明丽英志春晓俊嘉宇欣思雨子海天佳家怡博晨浩然梦琪雪松林青云峰鹏飞凯玉兰美静安宁"
_EN_FIRST = (
    "James Emily Michael Sarah David Laura Daniel Rachel Chris Megan Ryan Olivia Kevin Hannah Brian "
    "Natalie Jason Priya Marcus Elena Tom Grace Alex Chloe Sam Maya Ethan Nora"
).split()
_EN_LAST = (
    "Smith Johnson Carter Nguyen Patel Garcia Miller Brooks Turner Foster Hughes Bennett Reyes Walsh "
    "Coleman Price Murphy Sullivan Kim Fischer Morgan Hayes Ward Ortiz"
).split()

_CN_CITIES = (
    "上海 北京 深圳 杭州 广州 苏州 成都 武汉 南京 西安 天津 重庆 宁波 厦门 青岛 合肥 长沙 无锡".split()
)
_CN_CORES = (
    "云图 华芯 中科 博远 恒通 天合 新锐 瑞达 金石 卓越 海纳 睿智 星河 远航 鼎盛 嘉和 安泰 联创 "
    "同方 汇丰 宏图 盛世 启明 蓝海 万象 锦程 凯瑞 银河 华腾 永信"
).split()
_EN_CORES = (
    "Bluepeak Ironbridge Clearwater Summit Redwood Brightline Northstar Harbor Silverline Granite "
    "Evergreen Pioneer Keystone Lakeside Atlas Meridian Copperfield Oakridge Westgate Sterling "
    "Cobalt Horizon Juniper Falcon"
).split()


class _Industry(NamedTuple):
    cn: str
    en: str
    cn_word: str
    en_word: str
    effect: float
    """Small effect on the win chance (some industries buy more readily)."""


_INDUSTRIES: tuple[_Industry, ...] = (
    _Industry("制造业", "Manufacturing", "制造", "Manufacturing", 0.05),
    _Industry("软件与信息服务", "Software", "科技", "Software", 0.20),
    _Industry("电子", "Electronics", "电子", "Electronics", 0.10),
    _Industry("金融", "Financial services", "金融", "Financial", -0.25),
    _Industry("零售", "Retail", "商贸", "Retail", 0.0),
    _Industry("医疗", "Healthcare", "医药", "Health", -0.15),
    _Industry("物流", "Logistics", "物流", "Logistics", 0.05),
    _Industry("能源", "Energy", "能源", "Energy", -0.10),
)
_CN_REGIONS = ("华东", "华北", "华南", "西南", "华中")
_EN_REGIONS = ("West", "East", "Central", "EMEA", "APAC")

_CN_PRODUCTS = ("数据平台", "云安全套件", "智能客服", "ERP 集成", "供应链协同", "BI 分析", "工业物联网")
_EN_PRODUCTS = (
    "Data Platform",
    "Cloud Security",
    "Service Desk",
    "ERP Integration",
    "Supply Chain",
    "Analytics",
    "IoT Suite",
)

_NEXT_STEPS = {
    ("CN", 0): ("安排需求调研会议", "发送公司介绍和客户案例", "约技术负责人交流方案", "确认预算和决策链"),
    ("CN", 1): ("提交方案建议书", "安排产品演示", "POC 环境部署", "与采购确认报价"),
    ("CN", 2): ("合同条款法务审核", "等待客户盖章", "确认付款条款", "商务谈判：折扣审批"),
    ("US", 0): (
        "Book discovery call",
        "Send case studies",
        "Meet the technical lead",
        "Confirm budget and buying process",
    ),
    ("US", 1): (
        "Send proposal",
        "Product demo for the team",
        "Set up the proof of concept",
        "Pricing call with procurement",
    ),
    ("US", 2): (
        "Legal review of the MSA",
        "Waiting for signature",
        "Agree payment terms",
        "Discount approval",
    ),
}
_ACTIVITY_KINDS = ("call", "email", "email", "meeting")

_LEAD_SOURCES = ("self-sourced", "marketing", "outbound", "channel", "partner")
_SOURCE_EFFECT = {"self-sourced": 0.30, "marketing": 0.0, "outbound": -0.55, "channel": 0.10, "partner": 0.40}
_SOURCE_WEIGHTS: dict[tuple[str, str], tuple[float, ...]] = {
    # weights in _LEAD_SOURCES order, by (deal type, team)
    ("New Business", KEY_ACCOUNTS): (0.35, 0.15, 0.15, 0.15, 0.20),
    ("New Business", DIRECT): (0.15, 0.35, 0.25, 0.15, 0.10),
    ("Renewal", KEY_ACCOUNTS): (0.65, 0.0, 0.0, 0.20, 0.15),
    ("Renewal", DIRECT): (0.55, 0.0, 0.0, 0.30, 0.15),
    ("Expansion", KEY_ACCOUNTS): (0.60, 0.15, 0.05, 0.05, 0.15),
    ("Expansion", DIRECT): (0.50, 0.25, 0.05, 0.10, 0.10),
}
_PIPELINE_WEIGHTS = {KEY_ACCOUNTS: (0.50, 0.20, 0.30), DIRECT: (0.70, 0.12, 0.18)}
"""Share of new business, renewal and expansion deals by team."""


# --------------------------------------------------------------------------------------------------
# The organisation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rep:
    """A quota-carrying rep and the hidden traits that shape their deals."""

    owner: Owner
    team: str
    region: str
    """"CN" (sells in CNY, Chinese names) or "US" (USD, English names)."""
    skill: float
    """Added to every deal's log-odds of progressing (N(0, 0.35))."""
    bias: int
    """+1 happy ears (calls deals higher than the stage), -1 sandbagger, 0 neutral."""
    hygiene: float
    """How readily the rep closes out dead deals (low: zombie pipeline)."""
    hired: int
    """Ordinal of the first day the rep can own new deals (the window's start for veterans)."""
    tenure_start: int
    """Ordinal of the day the rep joined (new hires ramp up over their first half year)."""
    weight: float
    """Relative share of new deals the rep receives."""


def _stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts, identical in every process (unlike `hash`)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _unique_name(rng: random.Random, region: str, taken: set[str]) -> str:
    """A person's name in the region's language, not already used in the org.

    Common names first; a big org (thousands of reps) runs out of them and gets rarer two-character
    given names (Chinese) or a middle initial (English), and in the end a number.
    """
    for attempt in range(200):
        common = attempt < 50
        if region == "CN":
            given = (
                rng.choice(_CN_GIVEN) if common else rng.choice(_CN_GIVEN_CHARS) + rng.choice(_CN_GIVEN_CHARS)
            )
            name = rng.choice(_CN_SURNAMES) + given
        else:
            middle = " " if common else f" {chr(65 + rng.randrange(26))}. "
            name = f"{rng.choice(_EN_FIRST)}{middle}{rng.choice(_EN_LAST)}"
        if name not in taken:
            taken.add(name)
            return name
    name = f"{name} {len(taken) + 1}"  # pragma: no cover - 90,000 Chinese and 17,000 English names first
    taken.add(name)
    return name


def _rep_count(size: int) -> int:
    """Number of reps for `size` deals: one per about 200 deals, at least 25."""
    return max(25, round(size / 200))


def _build_org(seed: int, size: int, start: date) -> tuple[list[Owner], list[_Rep]]:
    """The VP, five managers (two key-account, three direct) and the reps, with stable ids."""
    rng = random.Random(_stable_seed(seed, "org"))
    taken: set[str] = set()
    owners = [Owner(id="u-vp", name=_unique_name(rng, "CN", taken), team=None, email="u-vp@example.com")]
    managers = []
    for m, (team, region) in enumerate(
        [(KEY_ACCOUNTS, "CN"), (KEY_ACCOUNTS, "US"), (DIRECT, "CN"), (DIRECT, "US"), (DIRECT, "CN")], start=1
    ):
        mid = f"u-m{m}"
        managers.append((mid, team))
        owners.append(
            Owner(
                id=mid,
                name=_unique_name(rng, region, taken),
                manager_id="u-vp",
                team=team,
                email=f"{mid}@example.com",
            )
        )
    n_reps = _rep_count(size)
    width = max(2, len(str(n_reps)))
    n_key = round(n_reps * 0.4)
    reps = []
    for r in range(n_reps):
        key = r < n_key
        team_managers = managers[:2] if key else managers[2:]
        slot = r if key else r - n_key
        manager_id, team = team_managers[slot % len(team_managers)]
        region = "CN" if rng.random() < 0.6 else "US"
        rid = f"u-r{r + 1:0{width}d}"
        owner = Owner(
            id=rid,
            name=_unique_name(rng, region, taken),
            manager_id=manager_id,
            team=team,
            email=f"{rid}@example.com",
        )
        owners.append(owner)
        late_hire = rng.random() < 0.2
        hired = start.toordinal() + (rng.randrange(60, 730) if late_hire else 0)
        tenure_start = hired if late_hire else start.toordinal() - rng.randrange(120, 2000)
        bias_draw = rng.random()
        reps.append(
            _Rep(
                owner=owner,
                team=team,
                region=region,
                skill=rng.gauss(0.0, 0.35),
                bias=1 if bias_draw < 0.3 else (-1 if bias_draw < 0.55 else 0),
                hygiene=rng.uniform(0.4, 1.3),
                hired=hired,
                tenure_start=tenure_start,
                weight=0.75 if key else 1.25,
            )
        )
    return owners, reps


def demo_owners(seed: int = 7, size: int = 5000, as_of: date | None = None) -> list[Owner]:
    """The demo org's people (VP, managers, reps), as the first batch of a sync carries them."""
    return _World.build(seed, size, as_of).owners


# --------------------------------------------------------------------------------------------------
# The world: everything shared by all deals of one run
# --------------------------------------------------------------------------------------------------


def _three_years_before(day: date) -> date:
    try:
        return day.replace(year=day.year - 3)
    except ValueError:  # 29 February
        return day.replace(year=day.year - 3, day=28)


@dataclass(frozen=True, slots=True)
class _World:
    """Seed, window, org and calendar tables shared by every deal of one run."""

    seed: int
    size: int
    as_of: date
    start: date
    owners: list[Owner]
    reps: list[_Rep]
    rep_cum_weights: list[float]
    lo: int
    """Ordinal of the first day in the calendar tables."""
    season: list[float]
    """Multiplier of the weekly win chance by day: low early in a quarter, high in its last weeks."""
    quarter_end: list[int]
    """Ordinal of the last day of the quarter containing each day."""
    month_end: list[int]
    """Ordinal of the last day of the month containing each day."""

    @classmethod
    def build(cls, seed: int, size: int, as_of: date | None) -> _World:
        today = as_of or datetime.now(UTC).date()
        start = _three_years_before(today)
        owners, reps = _build_org(seed, size, start)
        cum, total = [], 0.0
        for rep in reps:
            total += rep.weight
            cum.append(total)
        lo = start.toordinal() - 7
        hi = today.toordinal() + 365 * 2 + 120  # past any close date a deal can get
        season, quarter_end, month_end = _calendar_tables(lo, hi)
        return cls(seed, size, today, start, owners, reps, cum, lo, season, quarter_end, month_end)


def _calendar_tables(lo: int, hi: int) -> tuple[list[float], list[int], list[int]]:
    """Per-day season factor, quarter end and month end for ordinals lo..hi (demo quarters are calendar)."""
    calendar = FiscalCalendar(start_month=DEMO_FISCAL_START_MONTH)
    season: list[float] = []
    quarter_end: list[int] = []
    month_end: list[int] = []
    day = lo
    while day <= hi:
        quarter = calendar.quarter_of(date.fromordinal(day))
        q_start, q_last = quarter.start.toordinal(), quarter.last_day.toordinal()
        for o in range(max(day, q_start), q_last + 1):
            d = date.fromordinal(o)
            week = (o - q_start) // 7 + 1
            left = (q_last - o) // 7  # whole weeks left in the quarter
            season.append(
                0.55 if week <= 3 else 3.0 if left == 0 else 2.0 if left == 1 else 1.2 if left <= 3 else 0.9
            )
            quarter_end.append(q_last)
            nxt = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
            month_end.append(nxt.toordinal() - 1)
        day = q_last + 1
    return season, quarter_end, month_end


# --------------------------------------------------------------------------------------------------
# One deal
# --------------------------------------------------------------------------------------------------


_Model = TypeVar("_Model", bound=BaseModel)


def _validated(cls: type[_Model], values: dict[str, object]) -> _Model:
    return cls.model_validate(values)


def _pick_constructor() -> Callable[[type[_Model], dict[str, object]], _Model]:
    """`construct_trusted` if this pydantic builds from it exactly what validation builds, else validation.

    The generator makes millions of rows whose types it controls; validating them would double the
    run time.
    """
    when = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    samples: list[tuple[type[BaseModel], dict[str, object]]] = [
        (
            StageChange,
            {
                "opportunity_id": "x",
                "changed_at": when,
                "stage_id": "s",
                "amount": Decimal("1.00"),
                "close_date": when.date(),
                "forecast_category": ForecastCategory.COMMIT,
            },
        ),
        (Activity, {"opportunity_id": "x", "on": when.date(), "kind": "call"}),
        (
            Opportunity,
            {name: None for name in Opportunity.model_fields}
            | {
                "id": "x",
                "name": "n",
                "account": "a",
                "owner_id": "o",
                "pipeline_id": "p",
                "stage_id": "s",
                "amount": Decimal("1.00"),
                "currency": "USD",
                "is_closed": False,
                "is_won": False,
                "attributes": {"industry": "Software", "employees": 10.0},
            },
        ),
    ]
    for cls, values in samples:
        fast, slow = construct_trusted(cls, dict(values)), _validated(cls, dict(values))
        if (
            fast != slow or fast.model_dump_json() != slow.model_dump_json()
        ):  # pragma: no cover - pydantic changed
            return _validated
    return construct_trusted


_trusted = _pick_constructor()
"""Builds a model from values the generator made itself (see `_pick_constructor`)."""


class _DealRecord(NamedTuple):
    """A generated deal with its complete history and activities."""

    opportunity: Opportunity
    changes: list[StageChange]
    activities: list[Activity]


class _Account(NamedTuple):
    name: str
    short: str
    industry: _Industry
    employees: float
    area: str


@functools.lru_cache(maxsize=1 << 14)
def _account(seed: int, region: str, team: str, number: int) -> _Account:
    """Account `number` of the (region, team) pool, the same every time.

    Key accounts are groups and corporations, direct accounts smaller companies, so the two pools never
    share a name; size and area follow from the name, so two numbers that draw the same name are the
    same account.
    """
    key = team == KEY_ACCOUNTS
    rng = random.Random(_stable_seed(seed, "account", region, team, number))
    industry = rng.choice(_INDUSTRIES)
    if region == "CN":
        short = rng.choice(_CN_CITIES) + rng.choice(_CN_CORES) + industry.cn_word
        name = short + rng.choice(("集团", "股份有限公司") if key else ("有限公司", ""))
        areas = _CN_REGIONS
    else:
        short = f"{rng.choice(_EN_CORES)} {industry.en_word}"
        name = f"{short} {rng.choice(('Group', 'Holdings', 'Corp.') if key else ('Inc.', 'LLC', 'Ltd.'))}"
        areas = _EN_REGIONS
    facts = random.Random(_stable_seed(seed, "account", name))
    employees = float(round(math.exp(facts.gauss(8.0 if key else 5.3, 0.8))))
    return _Account(name, short, industry, employees, facts.choice(areas))


def _imported(world: _World) -> int:
    """Number of deals imported at go-live: the open pipeline the org had when it started the CRM."""
    return round(world.size * _GO_LIVE_SHARE)


def _created_day(world: _World, index: int, jitter: float) -> int:
    """Creation day of deal `index`; deals are in creation order.

    The first deals are the pipeline imported on the window's first working day (go-live); the rest
    are spread over the window, denser later (mild growth).
    """
    start = world.start.toordinal()
    imported = _imported(world)
    if index < imported:
        weekday = world.start.weekday()
        return start + (7 - weekday if weekday >= 5 else 0)
    span = world.as_of.toordinal() - start + 1
    u = (index - imported + jitter) / max(world.size - imported, 1)
    # inverse of the CDF of a density rising linearly by `growth` over the window
    x = (-1.0 + math.sqrt(1.0 + _GROWTH * (2.0 + _GROWTH) * u)) / _GROWTH
    day = start + min(int(x * span), span - 1)
    weekday = date.fromordinal(day).weekday()
    if weekday >= 5:  # weekends: the deal was entered on Friday
        day -= weekday - 4
    return max(day, start)


def _pick_rep(world: _World, rng: random.Random, day: int) -> _Rep:
    """A rep already hired on `day`, weighted by capacity."""
    reps, cum = world.reps, world.rep_cum_weights
    for _ in range(50):
        rep = reps[bisect.bisect_right(cum, rng.random() * cum[-1])]
        if rep.hired <= day:
            return rep
    return next(r for r in reps if r.hired <= day)  # pragma: no cover - most reps start on day one


def _weighted(rng: random.Random, weights: Sequence[float]) -> int:
    x = rng.random() * sum(weights)
    for i, w in enumerate(weights):
        x -= w
        if x < 0:
            return i
    return len(weights) - 1


_AMOUNT_RANGE = {"CNY": (80_000.0, 6_000_000.0), "USD": (5_000.0, 800_000.0)}
"""Smallest and largest deal value by currency."""


def _nice_amount(value: float, currency: str) -> Decimal:
    """Round to what reps type (CNY to 1,000, USD to 500) within the currency's range; quantize to cents."""
    step = 1000 if currency == "CNY" else 500
    lo, hi = _AMOUNT_RANGE[currency]
    return Decimal(round(min(max(value, lo), hi) / step) * step).quantize(_CENT)


def _revised(value: float, factor: float, currency: str) -> float:
    """An amount after a revision, kept within the currency's range."""
    lo, hi = _AMOUNT_RANGE[currency]
    return min(max(value * factor, lo), hi)


def _initial_amount(rng: random.Random, region: str, team: str, funnel_index: int, employees: float) -> float:
    """List value of a new deal: lognormal by currency, team and deal type, clipped to the demo ranges."""
    key = team == KEY_ACCOUNTS
    if region == "CN":
        median, (lo, hi) = (750_000.0 if key else 260_000.0), _AMOUNT_RANGE["CNY"]
    else:
        median, (lo, hi) = (105_000.0 if key else 36_000.0), _AMOUNT_RANGE["USD"]
    median *= (1.0, 0.7, 0.45)[funnel_index]
    median *= (employees / (3000.0 if team == KEY_ACCOUNTS else 200.0)) ** 0.15
    if funnel_index == 2 and rng.random() < 0.5:
        median *= 0.5  # add-on seats and modules
    return min(hi, max(lo, median * math.exp(rng.gauss(0.0, 0.75))))


def _category(rng: random.Random, default: int, bias: int, quality: float, dark: bool) -> int:
    """The rep's call: the stage's category, nudged by the rep's habit and their read of the deal."""
    shift = 0
    if bias and rng.random() < 0.5:
        shift += bias
    if quality > 1.0 and rng.random() < 0.25:
        shift += 1
    if dark and rng.random() < 0.4:
        shift -= 1
    return min(default + 1, 2, max(0, default + shift))


class _Setup(NamedTuple):
    """What is fixed when a deal is created: who, what, how good, and the rep's first guesses."""

    index: int
    created: int
    """Ordinal of the creation day."""
    rep: _Rep
    funnel: _Funnel
    funnel_index: int
    source: str
    account: _Account
    currency: str
    quality: float
    """Hidden quality, N(0, 1): what the rep and the CRM only see through the deal's behaviour."""
    amount: float
    base: float
    """Log-odds shift of progressing: quality, rep skill and ramp, source, industry, size."""
    speed: float
    """Multiplier of all weekly hazards (key accounts move slower, small inbound deals faster)."""
    grace: int
    stage: int
    close: int
    """Ordinal of the first expected close date."""


def _setup(world: _World, index: int, rng: random.Random) -> _Setup:
    """Draw the fixed facts of deal `index`."""
    rand = rng.random
    created = _created_day(world, index, rand())
    rep = _pick_rep(world, rng, created)
    team, region = rep.team, rep.region
    key = team == KEY_ACCOUNTS
    currency = "CNY" if region == "CN" else "USD"
    fi = _weighted(rng, _PIPELINE_WEIGHTS[team])
    funnel = _FUNNELS[fi]
    source = _LEAD_SOURCES[_weighted(rng, _SOURCE_WEIGHTS[(funnel.deal_type, team)])]
    pool = max(40, world.size // (30 if key else 8))
    account = _account(world.seed, region, team, int(pool * rand() ** 1.6))
    quality = rng.gauss(0.0, 1.0)
    amount = _initial_amount(rng, region, team, fi, account.employees)
    small = amount < (250_000 if region == "CN" else 35_000)
    fast = (fi == 0 and not key and small and source != "outbound" and rand() < _FAST_SHARE) or (
        fi == 2 and rand() < _FAST_SHARE * 0.6
    )
    usd = amount * (0.14 if region == "CN" else 1.0)
    tenure_weeks = (created - rep.tenure_start) / 7.0
    ramp = -0.4 * max(0.0, 1.0 - tenure_weeks / 26.0)
    base = (
        funnel.base
        + 0.8 * quality
        + rep.skill
        + ramp
        + _SOURCE_EFFECT[source]
        + account.industry.effect
        - 0.25 * math.log(usd / (150_000.0 if key else 30_000.0))
        + (0.5 if key and fi == 0 else 0.0)
    )
    imported = index < _imported(world)
    if imported:  # go-live: the deal was already somewhere in the funnel
        stage = min(int(rand() ** 2 * len(funnel.open_ids)), len(funnel.open_ids) - 1)
    elif fast:
        stage = (2 + (rand() < 0.4)) if fi == 0 else 1
    elif fi == 0:
        u = rand()
        stage = 0 if u < 0.75 else 1 if u < 0.95 else 2
    else:
        stage = 0
    lo_w, hi_w = (2, 5) if fast else (1, 16) if imported else funnel.cycle_weeks[team]
    close = created + 7 * rng.randint(lo_w, hi_w)
    snap = rand()
    if snap < 0.45:
        close = world.month_end[close - world.lo]
    elif snap < 0.65:
        close = world.quarter_end[close - world.lo]
    return _Setup(
        index=index,
        created=created,
        rep=rep,
        funnel=funnel,
        funnel_index=fi,
        source=source,
        account=account,
        currency=currency,
        quality=quality,
        amount=amount,
        base=base,
        speed=_TEAM_SPEED[team] * (_FAST_SPEED if fast else 1.0),
        grace=1 if fast else funnel.grace[team],
        stage=stage,
        close=close,
    )


_Row = tuple[int, str, Decimal, int, ForecastCategory]
"""A history row while simulating: (epoch seconds, stage id, amount, close-date ordinal, category)."""


class _Trajectory(NamedTuple):
    """A deal's simulated history up to `as_of`."""

    rows: list[_Row]
    activity_days: list[int]
    activity_kinds: list[str]
    outcome: int
    """0 open, 1 won, 2 lost."""
    dark: bool
    """Whether the buyer had gone quiet at the end (shapes the open deal's next step)."""


_EPOCH = date(1970, 1, 1).toordinal()


def _play(world: _World, s: _Setup, rng: random.Random) -> _Trajectory:
    """Play the deal week by week from creation until it closes or `as_of` is reached.

    Each week the buyer may go quiet (or come back), an activity may be logged, and one of win, lose,
    advance or move back may happen, with weekly chances that fall with time in stage, close-date
    pushes, backward moves and silence, and (for wins) rise at quarter end and near the close date.
    The rep pushes close dates that pass, revises amounts and re-calls the forecast category.
    """
    rand = rng.random
    exp = math.exp
    # the weekly loop runs about a million times per 100,000 deals: everything it reads is a local
    funnel, rep = s.funnel, s.rep
    win_t, adv_t, lose_t, back_t = funnel.win, funnel.advance, funnel.lose, funnel.back
    cats, open_ids, n_open = funnel.categories, funnel.open_ids, len(funnel.open_ids)
    date_driven, lose_dark, price_stage = funnel.date_driven, funnel.lose_dark, funnel.price_stage
    lo, as_day = world.lo, world.as_of.toordinal()
    season_t, qend_t, mend_t = world.season, world.quarter_end, world.month_end
    bias, quality, hyg, base, speed, grace = rep.bias, s.quality, rep.hygiene, s.base, s.speed, s.grace
    currency, created = s.currency, s.created
    key = rep.team == KEY_ACCOUNTS
    k_stall, k_push, k_back = _STALL_PENALTY, _PUSH_PENALTY, _BACK_PENALTY
    k_silence, k_dark = _SILENCE_PENALTY, _DARK_PENALTY
    k_up, k_down, k_proactive, k_pull = _ADVANCE_SLOPE, _LOSE_SLOPE, _PROACTIVE_PUSH, _PULL_IN
    hour_lo = (1 if rep.region == "CN" else 14) * 3600  # 09:00 in Shanghai / New York, in UTC
    weekday0 = created % 7  # ordinal % 7: 1 Monday .. 6 Saturday, 0 Sunday
    offsets = [d for d in range(1, 8) if (weekday0 + d) % 7 not in (6, 0)]

    stage, close, amount_f = s.stage, s.close, s.amount
    amount = _nice_amount(amount_f, currency)
    cat = _category(rng, cats[stage], bias, quality, False)
    t0 = (created - _EPOCH) * _DAY + hour_lo + int(rand() * 36_000)
    rows: list[_Row] = [(t0, open_ids[stage], amount, close, _CATEGORIES[cat])]
    acts: list[int] = []
    kinds: list[str] = []
    if rand() < 0.6:
        acts.append(created)
        kinds.append("call")

    act_rate = 0.5 if key else 0.4
    p_dark = (0.012 if date_driven else 0.03) * exp(-0.6 * quality) * (1.4 if s.source == "outbound" else 1.0)
    push_lag = 0.25 + 0.3 * hyg
    wis = pushes = backs = weeks_dark = wsa = age = outcome = 0
    dark = False
    while True:
        age += 1
        wis += 1
        week_start = created + 7 * (age - 1)
        if week_start >= as_day:
            break
        step_end = week_start + 7
        si = step_end - lo
        if dark:  # the buyer went quiet; sometimes they come back
            if rand() < 0.08:
                dark, weeks_dark = False, 0
            else:
                weeks_dark += 1
        elif rand() < p_dark:
            dark, weeks_dark = True, 1
        if rand() < (act_rate * 0.12 if dark else act_rate):
            day = week_start + offsets[int(rand() * 5)]
            if day <= as_day:
                acts.append(day)
                kinds.append(_ACTIVITY_KINDS[int(rand() * 4)])
                wsa = 0
            else:
                wsa += 1
        else:
            wsa += 1

        # weekly chances
        to_close = close - step_end
        if date_driven:  # renewals idle until the renewal date nears
            prox = 2.2 if to_close <= 21 else 0.4
            stall = wis - grace if (wis > grace and to_close <= 21) else 0
        else:
            prox = 1.0
            stall = wis - grace if wis > grace else 0
        z = base - k_stall * stall - k_push * pushes - k_back * backs - k_silence * (wsa if wsa < 8 else 8)
        if dark:
            z -= k_dark
        up = exp(k_up * z) if z < 4.0 else exp(k_up * 4.0)
        p_win = win_t[stage]
        if p_win:
            p_win *= up * speed * prox * season_t[si] * (1.7 if -14 <= to_close <= 7 else 1.0)
        p_adv = adv_t[stage] * up * speed * prox
        p_lose = lose_t[stage] * speed * hyg * exp(-k_down * z)
        if dark:
            p_lose += lose_dark * weeks_dark * hyg
        if age > 26:
            p_lose += 0.003 * (age - 26) * hyg
        left_in_q = qend_t[si] - step_end
        if (left_in_q < 7 or left_in_q > 83) and (dark or stall > 4):
            p_lose *= 2.0  # quarter-end pipeline scrub
        if age >= _MAX_WEEKS:
            p_lose = 1.0
        p_back = back_t[stage] * (1.8 if dark else 1.0)
        total = p_win + p_lose + p_adv + p_back
        if total > 0.95:
            scale = 0.95 / total
            p_win, p_lose, p_adv = p_win * scale, p_lose * scale, p_adv * scale

        u = rand()
        if u < p_win + p_lose:  # the deal closes this week
            day = week_start + offsets[int(rand() * 5)]
            if day > as_day:
                break
            outcome = 1 if u < p_win else 2
            t = (day - _EPOCH) * _DAY + hour_lo + int(rand() * 36_000)
            if outcome == 1:
                rows.append((t, funnel.won_id, amount, day, ForecastCategory.CLOSED))
                if rand() < 0.7:
                    acts.append(day)
                    kinds.append("meeting")
            else:
                rows.append((t, funnel.lost_id, amount, day, ForecastCategory.OMITTED))
            break

        moved = 0  # +1 forward, -1 back
        new_close, new_amount, new_cat = close, amount, cat
        if u < p_win + p_lose + p_adv:
            if stage < n_open - 1:  # the last open stage moves on only by winning
                moved = 2 if (stage + 2 < n_open and rand() < 0.15) else 1
        elif u < total and stage > 0:
            moved = -1
            if rand() < 0.5:  # a step back usually moves the date too
                new_close = mend_t[max(close, step_end) + 7 * rng.randint(3, 8) - lo]
        r = rand()  # one draw for the rep's other edits; their ranges never overlap
        if new_close == close:
            if to_close < 0:
                if r < (push_lag * 0.7 if dark else push_lag):
                    new_close = _pushed(rng, step_end, mend_t, qend_t, lo)
            elif to_close <= 10:  # due soon: early-stage deals are pushed, late-stage ones often slip
                if r < (k_proactive if stage + moved < n_open - 2 else k_proactive * 0.3):
                    new_close = _pushed(rng, step_end, mend_t, qend_t, lo)
            elif dark:
                if r < 0.04:
                    new_close = _pushed(rng, max(close, step_end), mend_t, qend_t, lo)
            elif stage >= n_open - 2 and close > qend_t[si] and 3 < qend_t[si] - step_end < 42 and r < k_pull:
                new_close = qend_t[si]  # pulled into this quarter
        if new_close > step_end + 364:  # nobody plans a deal more than a year out
            new_close = step_end + 364
        if moved:
            new_cat = _category(rng, cats[stage + moved], bias, quality, dark)
            if moved > 0 and stage < price_stage <= stage + moved and rand() < 0.4:  # the quote
                factor = rng.uniform(0.7, 1.0) if rand() < 0.6 else rng.uniform(1.05, 1.5)
                amount_f = _revised(amount_f, factor, currency)
                new_amount = _nice_amount(amount_f, currency)
        elif new_close != close:
            if new_close > qend_t[si] >= close and cat == 2 and bias <= 0 and rand() < 0.6:
                new_cat = 1  # pushed out of the quarter: no longer commit
        elif r >= 0.955:
            if stage < 1:
                continue
            # a discount or a change of scope
            factor = rng.uniform(0.75, 0.95) if rand() < 0.65 else rng.uniform(1.1, 1.4)
            amount_f = _revised(amount_f, factor, currency)
            new_amount = _nice_amount(amount_f, currency)
            if new_amount == amount:
                continue
        elif r >= 0.905:
            new_cat = _category(rng, cats[stage], bias, quality, dark)  # the rep re-calls the deal
            if new_cat == cat:
                continue
        else:
            continue

        day = week_start + offsets[int(rand() * 5)]
        if day > as_day:
            break
        if moved:
            stage += moved
            wis = 0
            if moved < 0:
                backs += 1
            elif rand() < 0.5:
                acts.append(day)
                kinds.append("meeting")
                wsa = 0
        if new_close > close:
            pushes += 1
        close, amount, cat = new_close, new_amount, new_cat
        rows.append(
            (
                (day - _EPOCH) * _DAY + hour_lo + int(rand() * 36_000),
                open_ids[stage],
                amount,
                close,
                _CATEGORIES[cat],
            )
        )
    return _Trajectory(rows, acts, kinds, outcome, dark)


def _pushed(rng: random.Random, from_day: int, month_end: list[int], quarter_end: list[int], lo: int) -> int:
    """A later close date the way reps pick one: a few weeks out, a month end or the next quarter end."""
    u = rng.random()
    target = from_day + 7 * rng.randint(_PUSH_WEEKS[0], _PUSH_WEEKS[1])
    if u < 0.4:
        target = month_end[target - lo]
    elif u < 0.6:
        target = quarter_end[quarter_end[from_day - lo] + 1 - lo]
    return target


def _simulate(world: _World, index: int) -> _DealRecord:
    """Deal `index` with its history and activities: the same for the same seed, `as_of` and index."""
    rng = random.Random(_stable_seed(world.seed, index))
    setup = _setup(world, index, rng)
    return _record(world, setup, _play(world, setup, rng), rng)


def _record(world: _World, s: _Setup, traj: _Trajectory, rng: random.Random) -> _DealRecord:
    """Turn a simulated trajectory into the CRM's records."""
    deal_id = f"DEMO-{s.index + 1:07d}"
    rep, funnel, account = s.rep, s.funnel, s.account
    fromts, fromord = datetime.fromtimestamp, date.fromordinal
    changes = [
        _trusted(
            StageChange,
            {
                "opportunity_id": deal_id,
                "changed_at": fromts(t, UTC),
                "stage_id": stage_id,
                "amount": amount,
                "close_date": fromord(close),
                "forecast_category": cat,
            },
        )
        for t, stage_id, amount, close, cat in traj.rows
    ]
    first, last = changes[0], changes[-1]
    days, kinds = traj.activity_days, traj.activity_kinds
    order = sorted(range(len(days)), key=days.__getitem__)
    activities = [
        _trusted(Activity, {"opportunity_id": deal_id, "on": fromord(days[i]), "kind": kinds[i]})
        for i in order
    ]
    closed = traj.outcome != 0
    next_step, next_step_date = (
        (None, None) if closed else _next_step(world, s, last.stage_id, traj.dark, rng)
    )
    cn = rep.region == "CN"
    year = first.changed_at.year
    label = {
        "New Business": " 新签" if cn else "",
        "Renewal": f" 续约 {year}" if cn else f" renewal {year}",
        "Expansion": " 扩容" if cn else " expansion",
    }[funnel.deal_type]
    product = rng.choice(_CN_PRODUCTS if cn else _EN_PRODUCTS)
    opportunity = _trusted(
        Opportunity,
        {
            "id": deal_id,
            "name": f"{account.short} - {product}{label}",
            "account": account.name,
            "owner_id": rep.owner.id,
            "pipeline_id": funnel.pipeline.id,
            "stage_id": last.stage_id,
            "amount": last.amount,
            "currency": s.currency,
            "close_date": last.close_date,
            "created_at": first.changed_at,
            "modified_at": last.changed_at,
            "forecast_category": last.forecast_category,
            "next_step": next_step,
            "next_step_date": next_step_date,
            "last_activity": activities[-1].on if activities else None,
            "lead_source": s.source,
            "type": funnel.deal_type,
            "is_closed": closed,
            "is_won": traj.outcome == 1,
            "closed_at": last.changed_at if closed else None,
            "probability": None,
            "attributes": {
                "industry": account.industry.cn if cn else account.industry.en,
                "employees": account.employees,
                "region": account.area,
            },
        },
    )
    return _DealRecord(opportunity, changes, activities)


def _next_step(
    world: _World, s: _Setup, stage_id: str, dark: bool, rng: random.Random
) -> tuple[str | None, date | None]:
    """An open deal's next step: missing on some deals, and overdue more often on deals gone quiet."""
    if rng.random() < (0.32 if dark else 0.14):
        return None, None
    open_ids = s.funnel.open_ids
    position = open_ids.index(stage_id) / max(1, len(open_ids) - 1)
    phase = 0 if position < 0.34 else 1 if position < 0.75 else 2
    text = rng.choice(_NEXT_STEPS[(s.rep.region, phase)])
    as_day = world.as_of.toordinal()
    if rng.random() < (0.45 if dark else 0.17):
        return text, date.fromordinal(as_day - rng.randint(1, 30))
    return text, date.fromordinal(as_day + rng.randint(0, 21))


# --------------------------------------------------------------------------------------------------
# The connector
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector while a batch is built.

    A batch allocates some 100,000 objects without a single reference cycle; left on, the collector
    rescans them over and over and takes about a third of the run time. Reference counting still frees
    everything; the collector is switched back on (if it was on) when the batch is done.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class DemoConnector:
    """A connector over the simulated demo CRM (see the module docstring)."""

    name = "demo"

    def __init__(
        self, seed: int = 7, size: int = 5000, as_of: date | None = None, batch_size: int = 2000
    ) -> None:
        """Args:
        seed: Seed of the simulation; the same seed and `as_of` give identical output.
        size: Number of deals created over the three years before `as_of` (0..1,000,000).
        as_of: Last day of the simulated history (default: today, UTC).
        batch_size: Deals per batch (at least 1).
        """
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
            raise ConnectorError(
                "Bad demo size", f"demo size must be a whole number from 0 to {MAX_SIZE:,}, got {size!r}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConnectorError(
                "Bad demo batch size",
                f"demo batch_size must be a whole number of at least 1, got {batch_size!r}",
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConnectorError("Bad demo seed", f"demo seed must be a whole number, got {seed!r}")
        if as_of is not None and (isinstance(as_of, datetime) or not isinstance(as_of, date)):
            raise ConnectorError(
                "Bad demo date", f"demo as_of must be a date such as 2026-03-31, got {as_of!r}"
            )
        self.seed = seed
        self.size = size
        self.batch_size = batch_size
        self._world = _World.build(seed, size, as_of)
        self.as_of = self._world.as_of
        """The last day of the simulated history."""

    @property
    def owners(self) -> list[Owner]:
        """The demo org: VP, managers and reps."""
        return list(self._world.owners)

    def generate(self) -> Iterator[SyncBatch]:
        """All batches of a full sync: pipelines and owners first, then deals `batch_size` at a time."""
        yield self._org_batch()
        yield from self._deal_batches(0)

    def deal(self, index: int) -> tuple[Opportunity, list[StageChange], list[Activity]]:
        """Deal number `index` (0-based) with its history and activities, without generating the others."""
        if not 0 <= index < self.size:
            raise IndexError(f"demo deal index {index} is outside 0..{self.size - 1}")
        record = _simulate(self._world, index)
        return record.opportunity, record.changes, record.activities

    async def batches(
        self, cursor: str | None, progress: ProgressCallback | None = None
    ) -> AsyncIterator[SyncBatch]:
        """Yield batches from `cursor` (None: a full sync, else resume after that many deals).

        Each batch is generated in a worker thread so an event loop stays responsive.
        """
        start = self._parse_cursor(cursor)
        pages = 0
        if cursor is None:
            batch = self._org_batch()
            pages += 1
            if progress:
                progress(SyncProgress(records=0, total=self.size, pages=pages, message=self._org_message()))
            yield batch
        for begin in range(start, self.size, self.batch_size):
            end = min(begin + self.batch_size, self.size)
            batch = await asyncio.to_thread(self._deal_batch, begin, end)
            pages += 1
            if progress:
                progress(
                    SyncProgress(
                        records=end,
                        total=self.size,
                        pages=pages,
                        message=f"Generated {end:,} of {self.size:,} demo deals",
                    )
                )
            yield batch

    def _parse_cursor(self, cursor: str | None) -> int:
        if cursor is None:
            return 0
        text = cursor.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > self.size:
            raise ConnectorError(
                "Bad resume point",
                f"the demo connector resumes from a number of deals between 0 and {self.size:,}, "
                f"got cursor {cursor!r}; run a full sync instead",
            )
        return int(text)

    def _org_message(self) -> str:
        reps = len(self._world.reps)
        return f"Demo org: {len(_PIPELINES)} pipelines, {len(self._world.owners)} people ({reps} reps)"

    def _org_batch(self) -> SyncBatch:
        return SyncBatch(pipelines=demo_pipelines(), owners=list(self._world.owners), cursor="0")

    def _deal_batches(self, start: int) -> Iterator[SyncBatch]:
        for begin in range(start, self.size, self.batch_size):
            yield self._deal_batch(begin, min(begin + self.batch_size, self.size))

    def _deal_batch(self, begin: int, end: int) -> SyncBatch:
        """Deals begin..end-1 with their histories and activities, cursor = end."""
        opportunities: list[Opportunity] = []
        changes: list[StageChange] = []
        activities: list[Activity] = []
        world = self._world
        with _collector_paused():
            for index in range(begin, end):
                record = _simulate(world, index)
                opportunities.append(record.opportunity)
                changes.extend(record.changes)
                activities.extend(record.activities)
        return SyncBatch.model_construct(
            pipelines=[],
            owners=[],
            opportunities=opportunities,
            changes=changes,
            activities=activities,
            cursor=str(end),
            deleted_ids=[],
        )


# --------------------------------------------------------------------------------------------------
# Quotas
# --------------------------------------------------------------------------------------------------


def demo_quotas(
    as_of: date | None = None, *, seed: int = 7, size: int = 5000
) -> dict[tuple[str, str], Decimal]:
    """Quarterly quota per rep, in USD, for each full quarter of the demo window, the current and the next.

    Keys are (owner id, quarter label such as "FY2026-Q1"); only reps carry quota (a manager's is the sum
    of their team's). A quota is the rep's share of the deals the org creates at that time of the window
    (with its growth) times what a deal of the rep's team books on average, plus a 5 % stretch; a new
    hire carries half quota in the quarter they join. The average deal value comes from the demo's own
    deals of the first half of the window, so quotas track what the simulation really books.
    """
    world = _World.build(seed, size, as_of)
    per_deal = _booked_per_deal(world)
    calendar = FiscalCalendar(start_month=DEMO_FISCAL_START_MONTH)
    quarter = calendar.quarter_of(world.start)
    if quarter.start < world.start:
        quarter = quarter.next()
    last = calendar.quarter_of(world.as_of).next()
    start = world.start.toordinal()
    span = world.as_of.toordinal() - start + 1
    per_day = (world.size - _imported(world)) / span
    quotas: dict[tuple[str, str], Decimal] = {}
    while quarter <= last:
        q_lo, q_hi = quarter.start.toordinal(), quarter.end.toordinal()
        # deals booked in a quarter were mostly created some weeks before it
        x = ((q_lo + q_hi) / 2 - _BOOKING_LAG_DAYS - start) / span
        deals = per_day * (q_hi - q_lo) * (1.0 + _GROWTH * x) / (1.0 + _GROWTH / 2.0)
        active = [r for r in world.reps if r.hired < q_hi]
        total_weight = sum(r.weight for r in active) or 1.0
        for rep in active:
            ramp = 0.5 if rep.hired >= q_lo else 1.0
            value = deals * rep.weight / total_weight * per_deal[rep.team] * _QUOTA_STRETCH * ramp
            quotas[(rep.owner.id, quarter.label)] = Decimal(max(5000, round(value / 5000) * 5000)).quantize(
                _CENT
            )
        quarter = quarter.next()
    return quotas


_BOOKING_LAG_DAYS = 45
_QUOTA_STRETCH = 1.05


def _booked_per_deal(world: _World, sample: int = 1200) -> dict[str, float]:
    """Average USD won per deal created, by team, over deals created in the first half of the window."""
    fx = {currency: float(rate) for currency, rate in demo_fx_rates().items()}
    won = {KEY_ACCOUNTS: 0.0, DIRECT: 0.0}
    count = {KEY_ACCOUNTS: 0, DIRECT: 0}
    teams = {rep.owner.id: rep.team for rep in world.reps}
    first, half = _imported(world), max(_imported(world) + 1, world.size // 2)
    step = max(1, (half - first) // sample)
    with _collector_paused():
        for index in range(first, min(half, world.size), step):
            opp = _simulate(world, index).opportunity
            team = teams[opp.owner_id]
            count[team] += 1
            if opp.is_won:
                won[team] += float(opp.amount) * fx[opp.currency]
    return {team: won[team] / count[team] if count[team] else 0.0 for team in won}
