"""The dashboard's pages: Jinja2 templates kept in code (no files to package), autoescaped."""

# ruff: noqa: E501  (HTML reads better unwrapped)

from __future__ import annotations

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<title>{{ title }} · djobs</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center;flex-wrap:wrap}
header a{color:#cfd6e4;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .db{margin-left:auto;color:#8b95a8;font-size:12px}
main{padding:1rem 1.2rem;max-width:1200px}
table{border-collapse:collapse;background:#fff;width:100%;margin:.5rem 0 1rem}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e3e6ec;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.card{display:inline-block;background:#fff;border:1px solid #e3e6ec;border-radius:6px;padding:.5rem .9rem;margin:0 .5rem .5rem 0}
.card b{display:block;font-size:1.4rem}
.status{padding:.05rem .4rem;border-radius:3px;background:#e3e6ec}
.s-completed{background:#d6f2dc}.s-failed{background:#fadada}.s-running{background:#dbe8fb}.s-cancelled{background:#eee}
pre{background:#fff;border:1px solid #e3e6ec;padding:.6rem;overflow:auto}
form.inline{display:inline}button{cursor:pointer}
.note{color:#5b6474}.error{color:#a11}
</style></head><body>
<header><strong>djobs</strong>
{% for href, label in nav %}<a href="{{ base }}{{ href }}" class="{{ 'on' if href == active else '' }}">{{ label }}</a>{% endfor %}
<span class="db">{{ where }} · {{ 'actions on' if can_act else ('read-only' if not login else '') }}
{% if login and not can_act %}<a href="{{ base }}/login">log in for actions</a>{% endif %}</span>
</header><main>
<h1>{{ title }}</h1>
{% if flash %}<p class="note" id="flash">{{ flash }}</p>{% endif %}
{% block content %}{% endblock %}
</main></body></html>
"""

ACTION = """{% macro action(path, label, csrf) -%}
<form class="inline" method="post" action="{{ base }}{{ path }}"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit" name="do" value="{{ label }}">{{ label }}</button></form>
{%- endmacro %}"""

OVERVIEW = """{% extends "base" %}{% block content %}
<div>
{% for status, n in jobs.items() %}<a class="card" href="{{ base }}/jobs?status={{ status }}" id="count-{{ status }}"><span>{{ status }}</span><b>{{ n }}</b></a>{% endfor %}
<span class="card" id="lateness"><span>lateness (oldest due job)</span><b>{{ lateness }}</b></span>
<span class="card"><span>due now</span><b>{{ due }}</b></span>
</div>
<h2>Completed and failed per minute, last hour</h2>
{{ chart|safe }}
<h2>Queue jobs by name</h2>
<table><tr><th>job</th>{% for s in statuses %}<th class="n">{{ s }}</th>{% endfor %}</tr>
{% for name, row in by_name %}<tr><td><a href="{{ base }}/jobs?name={{ name|urlencode }}">{{ name }}</a></td>
{% for s in statuses %}<td class="n">{{ row.get(s, 0) }}</td>{% endfor %}</tr>{% else %}<tr><td colspan="6">no jobs</td></tr>{% endfor %}
</table>
<h2>Instances</h2>
<table><tr><th>kind</th><th>job</th><th>status</th><th class="n">count</th></tr>
{% for c in instances %}<tr><td>{{ c.kind }}</td><td><a href="{{ base }}/instances?name={{ c.name|urlencode }}">{{ c.name }}</a></td><td>{{ c.status }}</td><td class="n">{{ c.count }}</td></tr>
{% else %}<tr><td colspan="4">no instances</td></tr>{% endfor %}</table>
<p class="note">Alarms: {{ alarms.due }} due, {{ alarms.claimed }} being handled, {{ alarms.later }} later.</p>
{% endblock %}"""

JOBS = """{% extends "base" %}{% block content %}
<form method="get" action="{{ base }}/jobs" id="filters">
<label>status <select name="status"><option value="">any</option>
{% for s in statuses %}<option value="{{ s }}" {{ 'selected' if s == f.status else '' }}>{{ s }}</option>{% endfor %}</select></label>
<label>name <input name="name" value="{{ f.name or '' }}" size="14"></label>
<label>tenant <input name="tenant" value="{{ f.tenant or '' }}" size="10"></label>
<label>correlation id <input name="correlation_id" value="{{ f.correlation_id or '' }}" size="14"></label>
<label>per page <input name="limit" value="{{ f.limit }}" size="3"></label>
<button type="submit" id="apply">filter</button></form>
<table id="jobs"><tr><th>id</th><th>name</th><th>status</th><th class="n">attempts</th><th class="n">progress</th><th>scheduled</th><th>tenant</th><th>error</th></tr>
{% for j in jobs %}<tr><td><a class="job" href="{{ base }}/jobs/{{ j.id|urlencode }}">{{ j.id }}</a></td><td>{{ j.name }}</td>
<td><span class="status s-{{ j.status }}">{{ j.status }}</span></td><td class="n">{{ j.attempt_count }}/{{ j.max_attempts }}</td>
<td class="n">{{ j.progress }}%</td><td>{{ when(j.scheduled_for) }}</td><td>{{ j.tenant_id or '' }}</td><td>{{ error_text(j) or '' }}</td></tr>
{% else %}<tr><td colspan="8">no jobs match</td></tr>{% endfor %}</table>
{% if next_page %}<a id="next" href="{{ base }}/jobs?{{ next_page }}">next page →</a>{% endif %}
{% endblock %}"""

JOB = """{% extends "base" %}{% import "action" as a %}{% block content %}
<table>
<tr><th>id</th><td>{{ j.id }}</td></tr><tr><th>name</th><td>{{ j.name }}</td></tr>
<tr><th>status</th><td><span id="status" class="status s-{{ j.status }}">{{ j.status }}</span>{% if j.cancel_requested %} (cancel requested){% endif %}</td></tr>
<tr><th>attempts</th><td>{{ j.attempt_count }} of {{ j.max_attempts }}</td></tr>
<tr><th>progress</th><td><progress id="progress" max="100" value="{{ j.progress }}"></progress> {{ j.progress }}% {{ j.progress_message or '' }}</td></tr>
<tr><th>tenant</th><td>{{ j.tenant_id or '-' }}</td></tr><tr><th>correlation id</th><td>{{ j.correlation_id or '-' }}</td></tr>
<tr><th>scheduled</th><td>{{ when(j.scheduled_for) }}</td></tr><tr><th>created</th><td>{{ when(j.created_at) }}</td></tr>
<tr><th>started</th><td>{{ when(j.worker_started_at) or '-' }}</td></tr><tr><th>finished</th><td>{{ when(j.completed_at) or '-' }}</td></tr>
<tr><th>worker</th><td>{{ j.worker_id or '-' }}</td></tr>
</table>
{% if can_act %}<p id="actions">
{% if j.status in ('pending', 'running') %}{{ a.action('/jobs/' ~ (j.id|urlencode) ~ '/cancel', 'cancel', csrf) }}{% endif %}
{% if j.status in ('failed', 'cancelled') %}{{ a.action('/jobs/' ~ (j.id|urlencode) ~ '/retry', 'retry', csrf) }}{% endif %}
</p>{% endif %}
<h2>Params</h2><pre id="params">{{ params }}</pre>
{% if result is not none %}<h2>Result</h2><pre id="result">{{ result }}</pre>{% endif %}
{% if error is not none %}<h2>Error</h2><pre id="error" class="error">{{ error }}</pre>{% endif %}
{% if refresh %}<p class="note">This page reloads every {{ refresh }} s while the job is {{ j.status }}.</p>{% endif %}
{% endblock %}"""

INSTANCES = """{% extends "base" %}{% block content %}
<form method="get" action="{{ base }}/instances">
<label>kind <select name="kind"><option value="">any</option>{% for k in kinds %}<option {{ 'selected' if k == f.kind else '' }}>{{ k }}</option>{% endfor %}</select></label>
<label>name <input name="name" value="{{ f.name or '' }}" size="14"></label>
<label>tenant <input name="tenant" value="{{ f.tenant or '' }}" size="10"></label>
<label>status <input name="status" value="{{ f.status or '' }}" size="10"></label>
<button type="submit">filter</button></form>
<table><tr><th>key</th><th>status</th><th class="n">runs</th><th class="n">events</th><th>next alarm</th><th>updated</th></tr>
{% for v in views %}<tr><td><a href="{{ base }}/instance?key={{ v.record.key|urlencode }}">{{ printable(v.record.key) }}</a></td>
<td>{{ v.record.status }}</td><td class="n">{{ v.record.run_count }}</td><td class="n">{{ v.record.event_count }}</td>
<td>{{ when(v.alarm.fire_at) if v.alarm else '-' }}{% if v.alarm %} ({{ v.alarm.purpose }}){% endif %}</td><td>{{ when(v.record.updated_at) }}</td></tr>
{% else %}<tr><td colspan="6">no instances match</td></tr>{% endfor %}</table>
{% if next_page %}<a href="{{ base }}/instances?{{ next_page }}">next page →</a>{% endif %}
{% endblock %}"""

INSTANCE = """{% extends "base" %}{% block content %}
{% set r = v.record %}
<table><tr><th>key</th><td>{{ printable(r.key) }}</td></tr><tr><th>kind</th><td>{{ r.kind }}</td></tr>
<tr><th>name</th><td>{{ r.name }}</td></tr><tr><th>id</th><td>{{ printable(r.instance_id) }}</td></tr>
<tr><th>tenant</th><td>{{ r.tenant_id or '-' }}</td></tr><tr><th>status</th><td>{{ r.status }}</td></tr>
<tr><th>runs</th><td>{{ r.run_count }} (attempt {{ r.attempt }})</td></tr><tr><th>events</th><td>{{ r.event_count }}</td></tr>
<tr><th>next alarm</th><td>{{ when(v.alarm.fire_at) ~ ' (' ~ v.alarm.purpose ~ ')' if v.alarm else '-' }}</td></tr>
<tr><th>lease</th><td>{{ v.lease_owner or '-' }}{% if v.lease_expires_at %} until {{ when(v.lease_expires_at) }}{% endif %}</td></tr>
<tr><th>updated</th><td>{{ when(r.updated_at) }}</td></tr></table>
<h2>State</h2><pre id="state">{{ state }}</pre>
{% if data is not none %}<h2>Data</h2><pre>{{ data }}</pre>{% endif %}
{% endblock %}"""

WORKFLOWS = """{% extends "base" %}{% block content %}
<form method="get" action="{{ base }}/workflows" id="filters">
<label>status <select name="status"><option value="">any</option>
{% for s in statuses %}<option value="{{ s }}" {{ 'selected' if s == f.status else '' }}>{{ s }}</option>{% endfor %}</select></label>
<label>name <input name="name" value="{{ f.name or '' }}" size="14"></label>
<label>tenant <input name="tenant" value="{{ f.tenant or '' }}" size="10"></label>
<label>per page <input name="limit" value="{{ f.limit }}" size="3"></label>
<button type="submit" id="apply">filter</button></form>
<table id="workflows"><tr><th>workflow</th><th>id</th><th>tenant</th><th>status</th><th class="n">steps done</th><th>current step</th><th>wakes at</th><th>updated</th></tr>
{% for v, w in rows %}<tr><td>{{ v.record.name }}</td><td><a class="workflow" href="{{ base }}/workflow?key={{ v.record.key|urlencode }}">{{ printable(v.record.instance_id) }}</a></td>
<td>{{ v.record.tenant_id or '' }}</td><td><span class="status s-{{ v.record.status }}">{{ v.record.status }}</span></td><td class="n">{{ v.record.execute_count }}</td>
<td>{{ (w.current_step or '') if w else '(log unreadable)' }}</td><td>{{ w.wake_at.isoformat(timespec='seconds') if w and w.wake_at else '' }}</td><td>{{ when(v.record.updated_at) }}</td></tr>
{% else %}<tr><td colspan="8">no workflows match</td></tr>{% endfor %}</table>
{% if next_page %}<a id="next" href="{{ base }}/workflows?{{ next_page }}">next page →</a>{% endif %}
{% endblock %}"""

WORKFLOW = """{% extends "base" %}{% import "action" as a %}{% block content %}
{% set r = v.record %}
<table><tr><th>workflow</th><td>{{ r.name }}</td></tr><tr><th>id</th><td>{{ printable(r.instance_id) }}</td></tr>
<tr><th>tenant</th><td>{{ r.tenant_id or '-' }}</td></tr>
<tr><th>status</th><td><span id="status" class="status s-{{ r.status }}">{{ r.status }}</span>{% if w and w.cancel_requested %} <span id="cancel-requested">(cancel requested)</span>{% endif %}</td></tr>
{% if w %}<tr><th>current step</th><td id="current">{{ w.current_step or '-' }}</td></tr>
<tr><th>wakes at</th><td id="wake-at">{{ w.wake_at.isoformat(timespec='seconds') if w.wake_at else '-' }}</td></tr>
<tr><th>steps done</th><td>{{ w.steps_finished }}</td></tr>
{% if w.error %}<tr><th>error</th><td class="error" id="error">{{ w.error.tag }}: {{ w.error.message }}</td></tr>{% endif %}{% endif %}
<tr><th>runs</th><td>{{ r.run_count }}</td></tr>
<tr><th>lease</th><td>{{ v.lease_owner or '-' }}{% if v.lease_expires_at %} until {{ when(v.lease_expires_at) }}{% endif %}</td></tr>
<tr><th>created</th><td>{{ when(r.created_at) }}</td></tr><tr><th>updated</th><td>{{ when(r.updated_at) }}</td></tr></table>
{% if can_act and r.status not in ('completed', 'failed', 'cancelled') %}<p id="actions">{{ a.action('/workflows/cancel?key=' ~ (r.key|urlencode), 'cancel', csrf) }}</p>{% endif %}
{% if w %}<h2>Steps</h2>
<table id="steps"><tr><th>#</th><th>kind</th><th>name</th><th>done</th><th class="n">attempts</th><th>until</th><th>at</th><th class="n">ms</th><th>error</th></tr>
{% for e in w.steps %}<tr><td class="n">{{ loop.index }}</td><td>{{ e.kind }}</td><td>{{ e.name }}</td>
<td>{{ 'cancelled' if e.cancelled else ('timed out' if e.timed_out else ('yes' if e.done else 'no')) }}</td><td class="n">{{ e.attempts or '' }}</td>
<td>{{ e.until.isoformat(timespec='seconds') if e.until else '' }}</td><td>{{ e.at.isoformat(timespec='seconds') if e.at else '' }}</td>
<td class="n">{{ e.duration_ms or '' }}</td><td>{{ (e.error.tag ~ ': ' ~ e.error.message) if e.error else '' }}</td></tr>
{% else %}<tr><td colspan="9">no steps yet</td></tr>{% endfor %}</table>
{% else %}<h2>Step log</h2><p class="error">This djobs cannot read the step log; it is shown as stored.</p><pre>{{ log }}</pre>{% endif %}
<h2>Input</h2><pre id="input">{{ input }}</pre>
{% if refresh %}<p class="note">This page reloads every {{ refresh }} s while the workflow is {{ r.status }}.</p>{% endif %}
{% endblock %}"""

CRON = """{% extends "base" %}{% import "action" as a %}{% block content %}
<table><tr><th>name</th><th>job</th><th>schedule</th><th>zone</th><th>enabled</th><th>next runs</th><th>last run</th>{% if can_act %}<th></th>{% endif %}</tr>
{% for c, runs in crons %}<tr><td>{{ c.name }}</td><td>{{ c.job_name }}</td><td><code>{{ c.expression }}</code></td><td>{{ c.tz }}</td>
<td>{{ 'yes' if c.enabled else 'no' }}</td><td>{% for t in runs %}{{ when(t) }}<br>{% endfor %}</td>
<td>{{ when(c.last_run_at) or '-' }}{% if c.last_job_id %}<br><a href="{{ base }}/jobs/{{ c.last_job_id|urlencode }}">{{ c.last_job_id }}</a>{% endif %}</td>
{% if can_act %}<td>{% if c.enabled %}{{ a.action('/cron/' ~ (c.name|urlencode) ~ '/disable', 'disable', csrf) }} {{ a.action('/cron/' ~ (c.name|urlencode) ~ '/run-now', 'run now', csrf) }}
{% else %}{{ a.action('/cron/' ~ (c.name|urlencode) ~ '/enable', 'enable', csrf) }}{% endif %}</td>{% endif %}</tr>
{% else %}<tr><td colspan="8">no cron jobs are stored</td></tr>{% endfor %}</table>
{% endblock %}"""

FAILED = """{% extends "base" %}{% block content %}
<h2>Failed jobs</h2>
<table><tr><th>id</th><th>name</th><th>attempts</th><th>finished</th><th>error</th></tr>
{% for j in jobs %}<tr><td><a href="{{ base }}/jobs/{{ j.id|urlencode }}">{{ j.id }}</a></td><td>{{ j.name }}</td><td>{{ j.attempt_count }}/{{ j.max_attempts }}</td>
<td>{{ when(j.completed_at) }}</td><td>{{ error_text(j) }}</td></tr>{% else %}<tr><td colspan="5">none</td></tr>{% endfor %}</table>
{% if more %}<a href="{{ base }}/jobs?status=failed">all failed jobs →</a>{% endif %}
<h2>Failed instances</h2>
<table><tr><th>key</th><th>runs</th><th>updated</th></tr>
{% for v in views %}<tr><td><a href="{{ base }}/instance?key={{ v.record.key|urlencode }}">{{ printable(v.record.key) }}</a></td><td>{{ v.record.run_count }}</td><td>{{ when(v.record.updated_at) }}</td></tr>
{% else %}<tr><td colspan="3">none</td></tr>{% endfor %}</table>
{% endblock %}"""

DEAD_LETTERS = """{% extends "base" %}{% block content %}
<form method="get" action="{{ base }}/dead-letters" id="filters">
<label>kind <select name="kind"><option value="">any</option>{% for k in kinds %}<option {{ 'selected' if k == f.kind else '' }}>{{ k }}</option>{% endfor %}</select></label>
<label>name <input name="name" value="{{ f.name or '' }}" size="14"></label>
<label>tenant <input name="tenant" value="{{ f.tenant or '' }}" size="10"></label>
<label>per page <input name="limit" value="{{ f.limit }}" size="3"></label>
<button type="submit" id="apply">filter</button></form>
<table id="dead-letters"><tr><th>id</th><th>kind</th><th>name</th><th>job or instance</th><th>tenant</th><th class="n">attempts</th><th>failed</th><th>error</th></tr>
{% for le in letters %}<tr><td><a class="letter" href="{{ base }}/dead-letters/{{ le.id|urlencode }}">{{ le.id }}</a></td><td>{{ le.kind }}</td><td>{{ le.name }}</td>
<td>{{ printable(le.ref) }}</td><td>{{ le.tenant_id or '' }}</td><td class="n">{{ le.attempts }}</td><td>{{ when(le.created_at) }}</td><td>{{ error_text(le) or '' }}</td></tr>
{% else %}<tr><td colspan="8">no dead letters match</td></tr>{% endfor %}</table>
{% if next_page %}<a id="next" href="{{ base }}/dead-letters?{{ next_page }}">next page →</a>{% endif %}
{% endblock %}"""

DEAD_LETTER = """{% extends "base" %}{% import "action" as a %}{% block content %}
<table><tr><th>id</th><td>{{ le.id }}</td></tr><tr><th>kind</th><td>{{ le.kind }}</td></tr><tr><th>name</th><td>{{ le.name }}</td></tr>
<tr><th>{{ 'job' if le.kind == 'job' else 'instance' }}</th><td>{% if le.kind == 'job' %}<a href="{{ base }}/jobs/{{ le.ref|urlencode }}">{{ le.ref }}</a>{% else %}{{ printable(le.ref) }}{% endif %}</td></tr>
<tr><th>tenant</th><td>{{ le.tenant_id or '-' }}</td></tr><tr><th>attempts</th><td>{{ le.attempts }}</td></tr>
{% if le.kind == 'debounce' %}<tr><th>events</th><td>{{ le.event_count }}</td></tr>{% endif %}
<tr><th>failed</th><td>{{ when(le.created_at) }}</td></tr></table>
{% if can_act %}<p id="actions">{{ a.action('/dead-letters/' ~ (le.id|urlencode) ~ '/retry', 'retry', csrf) }} {{ a.action('/dead-letters/' ~ (le.id|urlencode) ~ '/discard', 'discard', csrf) }}</p>{% endif %}
{% if error is not none %}<h2>Error</h2><pre id="error" class="error">{{ error }}</pre>{% endif %}
<h2>{{ 'Params' if le.kind == 'job' else ('Batch' if le.kind == 'debounce' else 'State') }}</h2><pre id="payload">{{ payload }}</pre>
{% endblock %}"""

LOGIN = """{% extends "base" %}{% block content %}
<form method="post" action="{{ base }}/login"><input type="hidden" name="csrf" value="{{ csrf }}">
<label>access token <input type="password" name="token" id="token" autocomplete="off"></label>
<button type="submit" id="login">log in</button></form>
{% if bad %}<p class="error">That is not the access token.</p>{% endif %}
{% endblock %}"""

MESSAGE = """{% extends "base" %}{% block content %}<p id="message">{{ message }}</p>{% endblock %}"""

TEMPLATES = {
    "base": BASE,
    "action": ACTION,
    "overview": OVERVIEW,
    "jobs": JOBS,
    "job": JOB,
    "instances": INSTANCES,
    "instance": INSTANCE,
    "workflows": WORKFLOWS,
    "workflow": WORKFLOW,
    "cron": CRON,
    "failed": FAILED,
    "dead_letters": DEAD_LETTERS,
    "dead_letter": DEAD_LETTER,
    "login": LOGIN,
    "message": MESSAGE,
}
