//! `.html`: one self-contained page (no network, no external scripts or fonts) with a
//! swimlane timeline: a lane per endpoint, a coloured bar per state, TIME-WAIT drawn to
//! scale with how it ended, hover notes, a legend, and a log/linear time scale (a 0.1 ms
//! handshake and a 60 s TIME-WAIT on one axis).
//!
//! Safety: text from the kernel or the user (comm names, addresses) only reaches the page
//! as JSON data inside a `<script type="application/json">` block, with `<`, `>` and `&`
//! escaped, and the page's script puts it into the DOM with `textContent`, never as markup.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::{ExportInput, Timeline, html_escape};
use crate::{
    event::TcpState,
    render::explain::{self, Lang},
    render::report::{Human, closer_sentence},
};

/// Colours of the states, also the legend.
const STATE_COLOURS: [(&str, &str); 11] = [
    ("SYN_SENT", "#9ecae1"),
    ("SYN_RECEIVED", "#6baed6"),
    ("ESTABLISHED", "#74c476"),
    ("FIN_WAIT1", "#fdae6b"),
    ("FIN_WAIT2", "#fd8d3c"),
    ("CLOSE_WAIT", "#fdd0a2"),
    ("LAST_ACK", "#e6550d"),
    ("CLOSING", "#de2d26"),
    ("TIME_WAIT", "#9e9ac8"),
    ("LISTEN", "#bdbdbd"),
    ("NEW_SYN_RECV", "#c6dbef"),
];

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
h2 { font-size: 1.05em; margin: 1.2em 0 .3em; }
.conn { padding-right: 2.5em; }
.controls button { font: inherit; padding: .1em .7em; border: 1px solid #888; background: #f4f4f4; cursor: pointer; }
.controls button.on { background: #333; color: #fff; }
.legend { margin: .6em 0; display: flex; flex-wrap: wrap; gap: .4em 1em; }
.legend span::before { content: ""; display: inline-block; width: 1em; height: 1em; margin-right: .3em; vertical-align: -.15em; background: var(--c); border: 1px solid #0003; }
.notes p { margin: .3em 0; max-width: 70em; }
.lane { display: flex; align-items: center; margin: 2px 0; }
.carried { color: #666; font-size: 11px; }
.label { width: 26em; flex: none; font-family: ui-monospace, monospace; font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; padding-right: .5em; }
.track { position: relative; flex: 1; height: 26px; background: #fafafa; border: 1px solid #ddd; }
.bar { position: absolute; top: 2px; bottom: 2px; border: 1px solid #0004; box-sizing: border-box; font-size: 11px; line-height: 20px; overflow: hidden; white-space: nowrap; padding: 0 2px; cursor: default; }
.bar.open { border-right: 3px dashed #000; }
.mark { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #000; }
.mark.rst { background: #c00; }
.axis { position: relative; margin-left: 26em; height: 1.4em; font-size: 11px; color: #555; }
.axis span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.tip { position: fixed; max-width: 32em; background: #fff; border: 1px solid #888; padding: .4em .6em; box-shadow: 0 2px 6px #0003; font-size: 12px; pointer-events: none; white-space: pre-line; }
"#;

/// Draws the page from the embedded data; `document.body.dataset.rendered` says it finished.
const SCRIPT: &str = r#"
const data = JSON.parse(document.getElementById('data').textContent);
let scale = 'steps';
const tip = document.getElementById('tip');
function el(tag, cls) { const e = document.createElement(tag); if (cls) e.className = cls; return e; }
function fmt(us) {
  if (us < 1000) return (us / 1000).toFixed(3) + ' ms';
  if (us < 1e6) return (us / 1000).toFixed(1) + ' ms';
  return (us / 1e6).toFixed(2) + ' s';
}
// 'steps' is a broken axis: every gap between two events gets room that grows with the
// log of its own length, so a 10 us state and a 60 s TIME-WAIT are both visible.
function stepsAxis(c) {
  const points = new Set([0, c.span]);
  for (const lane of c.lanes) {
    for (const iv of lane.intervals) { points.add(iv.start); points.add(iv.end); }
    for (const m of lane.instants) points.add(m.t);
  }
  const at = [...points].sort((a, b) => a - b);
  const room = [0];
  for (let i = 1; i < at.length; i++) room.push(room[i - 1] + 0.3 + Math.log10(1 + at[i] - at[i - 1]));
  return { at, room, total: room[room.length - 1] };
}
function pos(t, c) {
  const max = c.span;
  if (max <= 0) return 0;
  if (scale === 'log') return Math.log10(1 + t) / Math.log10(1 + max);
  if (scale === 'linear') return t / max;
  const { at, room, total } = c.axis;
  let i = 1;
  while (i < at.length - 1 && at[i] < t) i++;
  const part = at[i] > at[i - 1] ? (t - at[i - 1]) / (at[i] - at[i - 1]) : 0;
  return (room[i - 1] + part * (room[i] - room[i - 1])) / total;
}
function hover(target, text) {
  target.addEventListener('mousemove', ev => {
    tip.textContent = text; tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 12, innerWidth - 320) + 'px';
    tip.style.top = (ev.clientY + 14) + 'px';
  });
  target.addEventListener('mouseleave', () => { tip.hidden = true; });
}
function render() {
  const main = document.getElementById('connections');
  main.replaceChildren();
  for (const c of data.connections) {
    c.axis = c.axis || stepsAxis(c);
    const section = el('section', 'conn');
    const title = el('h2'); title.textContent = c.title; section.append(title);
    if (c.note) { const p = el('div', 'note'); p.textContent = c.note; section.append(p); }
    for (const lane of c.lanes) {
      const row = el('div', 'lane');
      const label = el('div', 'label'); label.textContent = lane.label; label.title = lane.label + (lane.carried ? '\n' + lane.carried : '');
      if (lane.carried) { const carried = el('div', 'carried'); carried.textContent = lane.carried; label.append(carried); }
      const track = el('div', 'track');
      for (const iv of lane.intervals) {
        const bar = el('div', 'bar' + (iv.open ? ' open' : ''));
        const left = pos(iv.start, c) * 100, right = pos(iv.end, c) * 100;
        bar.style.left = left + '%';
        bar.style.width = Math.max(right - left, 0.25) + '%';
        bar.style.background = data.colours[iv.state] || '#ccc';
        const length = fmt(iv.end - iv.start) + (iv.open ? '+' : '');
        bar.textContent = iv.state + ' ' + length + (iv.detail ? ' (' + iv.detail + ')' : '');
        hover(bar, iv.state + ': ' + length + (iv.detail ? ', ' + iv.detail : '') + '\n' + (iv.note || ''));
        track.append(bar);
      }
      for (const m of lane.instants) {
        const mark = el('div', 'mark' + (m.name.startsWith('RST') ? ' rst' : ''));
        mark.style.left = pos(m.t, c) * 100 + '%';
        hover(mark, m.name + ' at +' + fmt(m.t));
        track.append(mark);
      }
      row.append(label, track);
      section.append(row);
    }
    const axis = el('div', 'axis');
    const ticks = scale === 'log' ? [0, 100, 1000, 1e4, 1e5, 1e6, 1e7, 6e7].filter(t => t <= c.span)
      : scale === 'linear' ? [0, 0.25, 0.5, 0.75, 1].map(f => f * c.span)
      : c.axis.at;
    let last = -1;
    for (const t of ticks) {
      const x = pos(t, c);
      if (x - last < 0.07) continue; // keep labels apart
      last = x;
      const s = el('span'); s.style.left = x * 100 + '%'; s.textContent = (t > 0 ? '+' : '') + fmt(t);
      axis.append(s);
    }
    section.append(axis);
    main.append(section);
  }
  document.body.dataset.rendered = 'yes';
}
for (const which of ['steps', 'log', 'linear']) {
  document.getElementById(which).addEventListener('click', () => {
    scale = which;
    document.querySelectorAll('.controls button').forEach(b => b.classList.toggle('on', b.id === which));
    render();
  });
}
render();
"#;

/// JSON that is safe inside a `<script>` block: no `<`, `>` or `&` characters at all.
fn script_json(value: &Value) -> String {
    value.to_string().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

fn connection_data(timeline: &Timeline<'_>, lang: Lang) -> Value {
    let start = timeline.start_ns().unwrap_or(0);
    let us = |ns: u64| ns.saturating_sub(start) as f64 / 1000.0;
    let mut span: f64 = 0.0;
    let lanes: Vec<Value> = timeline
        .lanes
        .iter()
        .map(|lane| {
            let mut previous = None;
            let intervals: Vec<Value> = lane
                .intervals
                .iter()
                .map(|interval| {
                    span = span.max(us(interval.end_ns));
                    let note = match TcpState::from_name(interval.state) {
                        Some(state) => explain::transition(lang, previous.unwrap_or(state), state, false),
                        None => explain::WHY_TIME_WAIT.text(lang),
                    };
                    previous = TcpState::from_name(interval.state);
                    json!({
                        "state": interval.state, "start": us(interval.start_ns), "end": us(interval.end_ns),
                        "open": interval.open, "detail": interval.detail, "note": note,
                    })
                })
                .collect();
            let instants: Vec<Value> =
                lane.instants.iter().map(|i| json!({"name": i.name, "t": us(i.ts_ns)})).collect();
            json!({"label": lane.label(), "carried": lane.carried(), "intervals": intervals, "instants": instants})
        })
        .collect();
    let connection = timeline.connection;
    let mut title =
        format!("Connection {}: {}", connection.id, closer_sentence(connection.closed_first));
    for lane in &timeline.lanes {
        if let Some(tw) = &lane.endpoint.time_wait {
            match tw.duration_ns() {
                Some(d) => title.push_str(&format!(
                    "; TIME-WAIT on {} lasted {} ({})",
                    lane.endpoint.local,
                    Human(d),
                    tw.end.name()
                )),
                None => {
                    title.push_str(&format!("; TIME-WAIT on {} still open", lane.endpoint.local))
                }
            }
        }
    }
    if connection.incomplete {
        title.push_str(" [incomplete]");
    }
    json!({
        "title": title,
        "note": explain::connection(lang, connection).join(" "),
        "span": span,
        "lanes": lanes,
    })
}

pub fn write(out: &mut impl Write, input: &ExportInput<'_>) -> io::Result<()> {
    let lang = input.lang;
    let connections: Vec<Value> = input
        .connections
        .iter()
        .map(|c| connection_data(&Timeline::new(c, input.end_ns, input.names), lang))
        .collect();
    let colours: serde_json::Map<String, Value> =
        STATE_COLOURS.iter().map(|(state, colour)| (state.to_string(), json!(colour))).collect();
    let data = json!({"connections": connections, "colours": colours});
    let html_lang = match lang {
        Lang::En => "en",
        Lang::Ru => "ru",
    };
    writeln!(
        out,
        "<!doctype html>\n<html lang=\"{html_lang}\">\n<head>\n<meta charset=\"utf-8\">"
    )?;
    writeln!(
        out,
        "<title>tcptrace: {} connections</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        input.connections.len()
    )?;
    writeln!(out, "<h1>tcptrace: {} connection(s)</h1>", input.connections.len())?;
    writeln!(
        out,
        "<div class=\"controls\">Time scale: <button id=\"steps\" class=\"on\">steps</button> <button id=\"log\">log</button> \
         <button id=\"linear\">linear</button> (steps: each gap between two events gets room by the log \
         of its length; time runs from each connection's first event; hover a bar for details)</div>"
    )?;
    write!(out, "<div class=\"legend\">")?;
    for (state, colour) in STATE_COLOURS {
        write!(out, "<span style=\"--c:{colour}\">{}</span>", html_escape(state))?;
    }
    writeln!(out, "<span style=\"--c:#fff\">dashed edge: still open at the end</span></div>")?;
    writeln!(out, "<details class=\"notes\" open><summary>TIME-WAIT</summary>")?;
    for note in explain::TIME_WAIT_NOTES {
        writeln!(out, "<p>{}</p>", html_escape(note.text(lang)))?;
    }
    writeln!(out, "<p>{}</p></details>", html_escape(explain::SIMULTANEOUS.text(lang)))?;
    writeln!(out, "<main id=\"connections\"></main>\n<div id=\"tip\" class=\"tip\" hidden></div>")?;
    writeln!(out, "<script type=\"application/json\" id=\"data\">{}</script>", script_json(&data))?;
    writeln!(out, "<script>{SCRIPT}</script>\n</body>\n</html>")
}
