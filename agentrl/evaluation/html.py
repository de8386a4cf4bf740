"""report.html: one self-contained page (inline CSS, JS and base64 PNG; nothing fetched).

The page holds the metrics table, the comparisons, the capability plot and a trajectory viewer:
each episode as a ``<details>`` element (task prompt, then every turn's action, tool call,
observation and reward), filtered in plain JS by outcome, policy and suite. The filter reads
its initial state from the URL fragment (``report.html#outcome=failure&suite=toolcalc``).
All text is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
from html import escape

from agentrl.evaluation.outputs import Evaluation

TABLE_COLUMNS = [
    ("label", "policy"),
    ("rl_step", "RL step"),
    ("suite", "suite"),
    ("tasks", "tasks"),
    ("episodes", "episodes"),
    ("success", "success (95% CI)"),
    ("reward", "reward (95% CI)"),
    ("turns_mean", "turns"),
    ("generated_tokens_mean", "generated tokens"),
    ("invalid_action_rate", "invalid actions"),
    ("tool_error_rate", "tool errors"),
    ("truncated_rate", "truncated"),
]
# the turn info keys shown under a tool call (the rest stay in trajectories.jsonl)
SHOWN_INFO = ("tool", "result", "answer", "error")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1150px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(3) { text-align: left; }
pre { white-space: pre-wrap; margin: 2px 0; background: #f7f7f7; padding: 4px 6px; }
details.episode { border: 1px solid #ddd; border-left: 5px solid #c33; margin: 6px 0;
  padding: 4px 8px; }
details.episode[data-outcome=success] { border-left-color: #2a2; }
.turn { margin: 6px 0; } .tool { color: #555; } .meta, .note { color: #555; }
#controls { position: sticky; top: 0; background: #fff; padding: 6px 0; }
"""

SCRIPT = """
(function () {
  var byId = function (id) { return document.getElementById(id); };
  var episodes = Array.prototype.slice.call(document.querySelectorAll('#episodes .episode'));
  var filters = { outcome: byId('filter-outcome'), policy: byId('filter-policy'),
                  suite: byId('filter-suite') };
  var keys = Object.keys(filters);
  function apply() {
    var shown = 0;
    episodes.forEach(function (e) {
      var ok = keys.every(function (k) {
        var v = filters[k].value; return v === 'all' || e.dataset[k] === v; });
      e.hidden = !ok; if (ok) { shown += 1; }
    });
    byId('shown-count').textContent = shown + ' of ' + episodes.length + ' episodes shown';
  }
  new URLSearchParams(location.hash.slice(1)).forEach(function (v, k) {
    if (filters[k]) { filters[k].value = v; }
  });
  keys.forEach(function (k) { filters[k].addEventListener('change', apply); });
  apply();
  document.body.dataset.ready = 'true';
})();
"""


def _fmt(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _cell(row: dict, key: str) -> str:
    if key == "success":
        low, high = row["success_ci_low"], row["success_ci_high"]
        return f"{_fmt(row['success_rate'], True)} [{_fmt(low, True)}, {_fmt(high, True)}]"
    if key == "reward":
        return f"{_fmt(row['reward_mean'])} [{_fmt(row['reward_ci_low'])}, {_fmt(row['reward_ci_high'])}]"
    pct = key.endswith("_rate") or key.startswith("pass@")
    return _fmt(row.get(key), pct)


def metrics_table(rows: list[dict]) -> str:
    pass_cols = sorted({k for r in rows for k in r if k.startswith("pass@")})
    cols = TABLE_COLUMNS[:7] + [(k, k) for k in pass_cols] + TABLE_COLUMNS[7:]
    head = "".join(f"<th>{escape(title)}</th>" for _, title in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_cell(r, key))}</td>" for key, _ in cols) + "</tr>"
        for r in rows
    )
    return f'<table id="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _turn(i: int, turn: dict) -> str:
    info = turn.get("info") or {}
    shown = [f"{k}: {info[k]}" for k in SHOWN_INFO if info.get(k) not in (None, "")]
    flags = [k for k in ("invalid", "truncated") if info.get(k)]
    tool = escape("; ".join(shown + flags) or "no tool call")
    obs = turn.get("observation") or ""
    return (
        f'<li class="turn"><div class="action"><b>action {i + 1}</b>'
        f"<pre>{escape(turn.get('action', ''))}</pre></div>"
        f'<div class="tool">tool call: {tool}</div>'
        f'<div class="observation"><b>observation</b><pre>{escape(obs) or "(none: episode over)"}'
        f'</pre></div><div class="reward">reward {escape(_fmt(turn.get("reward")))}</div></li>'
    )


def episode_html(rec: dict) -> str:
    outcome = "success" if rec.get("success") else "failure"
    mark = "✔" if outcome == "success" else "✘"
    summary = (
        f"{mark} {rec['label']} · {rec['suite']} · {rec['task_id']} · reward "
        f"{_fmt(rec.get('reward'))} · {len(rec['turns'])} turns · {rec['status']}"
    )
    turns = "".join(_turn(i, t) for i, t in enumerate(rec["turns"]))
    error = f'<p class="note">error: {escape(rec["error"])}</p>' if rec.get("error") else ""
    attrs = (
        f'data-outcome="{outcome}" data-policy="{escape(rec["label"], quote=True)}" '
        f'data-suite="{escape(rec["suite"], quote=True)}"'
    )
    return (
        f'<details class="episode" {attrs}><summary>{escape(summary)}</summary>'
        f'<div class="prompt"><b>task</b><pre>{escape(rec["prompt"])}</pre>'
        f'<span class="note">expected answer: {escape(json.dumps(rec.get("answer")))}</span>'
        f'</div><ol class="turns">{turns}</ol>{error}</details>'
    )


def _select(ident: str, values: list[str], label: str) -> str:
    opts = '<option value="all">all</option>' + "".join(
        f'<option value="{escape(v, quote=True)}">{escape(v)}</option>' for v in values
    )
    return f'<label>{label} <select id="{ident}">{opts}</select></label> '


def viewer(records: list[dict]) -> str:
    policies = list(dict.fromkeys(r["label"] for r in records))
    suites = list(dict.fromkeys(r["suite"] for r in records))
    outcome = (
        '<label>outcome <select id="filter-outcome"><option value="all">all</option>'
        '<option value="success">successes</option><option value="failure">failures</option>'
        "</select></label> "
    )
    controls = (
        f'<div id="controls">{outcome}{_select("filter-policy", policies, "policy")}'
        f'{_select("filter-suite", suites, "suite")}<span id="shown-count"></span></div>'
    )
    body = "".join(episode_html(r) for r in records)
    return f'{controls}<div id="episodes">{body}</div>'


def render(ev: Evaluation, png: bytes, records: list[dict], header: str) -> str:
    """The whole page. ``records`` are the episodes to show (trajectories.jsonl has them all)."""
    comps = "".join(
        f"<li><b>{escape(c['suite'])}, {escape(c['comparison'])}:</b> {escape(c['statement'])}"
        + (f' <span class="note">({escape(c["note"])})</span>' if c["note"] else "")
        + "</li>"
        for c in ev.comparisons
    )
    notes = "".join(f'<li class="note">{escape(n)}</li>' for n in ev.notes)
    image = base64.b64encode(png).decode()
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>agentrl evaluation</title><style>{STYLE}</style></head><body>"
        f'<h1>agentrl evaluation</h1><p class="meta">{escape(header)}</p>'
        f"<h2>Metrics</h2>{metrics_table(ev.rows)}"
        f'<h2>Comparisons</h2><ul id="comparisons">{comps or "<li>nothing to compare</li>"}</ul>'
        f"{f'<ul id=notes>{notes}</ul>' if notes else ''}"
        '<h2>Capability</h2><img id="capability" alt="success rate vs RL step" '
        f'src="data:image/png;base64,{image}">'
        f"<h2>Trajectories</h2>{viewer(records)}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
