// meshgate's charts: hand-drawn SVG, no library and no build step. Three shapes cover the stats
// page (lines of percentiles over days, stacked bars of outcomes per day, horizontal bars of
// rates); a library would be larger than the page it serves. Colours come from the stylesheet
// (classes, never inline styles), so light and dark mode and the page's CSP hold for them.
"use strict";

const charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 900, H = 240, PAD = { l: 64, r: 24, t: 12, b: 28 };

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
    for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  /// A round step for an axis holding `max` in four steps: 1, 2 or 5 times a power of ten for
  /// counts, whole seconds and minutes and hours for times.
  function step(max, times) {
    const quarter = max / 4;
    if (!(quarter > 0)) return times ? 15 : 1;
    const steps = times ? [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400] : [];
    const found = steps.find((x) => x >= quarter);
    if (found) return found;
    const power = 10 ** Math.floor(Math.log10(quarter));
    return [1, 2, 5, 10].map((m) => m * power).find((x) => x >= quarter);
  }

  /// Seconds as people read them on an axis: `45 s`, `12 min`, `1.5 h`.
  function seconds(v) {
    if (v < 120) return `${Math.round(v)} s`;
    if (v < 7200) return `${+(v / 60).toFixed(1)} min`;
    return `${+(v / 3600).toFixed(1)} h`;
  }

  /// `12-07` of `2026-12-07`.
  const shortDay = (day) => day.slice(5);

  /// The axes: four steps up to `max`, a day's label every few days. Bars stand in bands (`banded`),
  /// points on the days' lines.
  function frame(name, label, max, format, days, banded) {
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label, "data-chart": name });
    const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / max);
    const inner = W - PAD.l - PAD.r;
    const x = banded ? (i) => PAD.l + (inner * (i + 0.5)) / days.length
      : (i) => PAD.l + inner * (days.length === 1 ? 0.5 : i / (days.length - 1));
    for (let k = 0; k <= 4; k++) {
      const v = (max * k) / 4;
      svg.append(s("line", { class: "grid", x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }),
        s("text", { class: "tick", x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
    }
    const every = Math.max(1, Math.ceil(days.length / 8));
    days.forEach((day, i) => {
      if (i % every === 0 || i === days.length - 1) {
        const edge = !banded && days.length > 1;
        const anchor = edge && i === days.length - 1 ? "end" : edge && i === 0 ? "start" : "middle";
        svg.append(s("text", { class: "tick", x: x(i), y: H - 8, "text-anchor": anchor }, shortDay(day)));
      }
    });
    return { svg, x, y };
  }

  function legend(items) {
    return h("ul", { class: "legend" }, items.map(([cls, text]) => h("li", {}, h("span", { class: `swatch ${cls}` }), text)));
  }

  /// Lines over days: `series` is `[{ name, cls, values: [number|null per day] }]`; a day without
  /// a value breaks the line.
  function line(name, label, days, series, format = seconds) {
    const max = 4 * step(Math.max(0, ...series.flatMap((l) => l.values.filter((v) => v !== null))), format === seconds);
    const { svg, x, y } = frame(name, label, max, format, days, false);
    for (const l of series) {
      let d = "", pen = "M";
      l.values.forEach((v, i) => {
        if (v === null) { pen = "M"; return; }
        d += `${pen}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
        pen = "L";
      });
      svg.append(s("path", { class: `series ${l.cls}`, d: d.trim() }));
      l.values.forEach((v, i) => {
        if (v === null) return;
        svg.append(s("circle", { class: `point ${l.cls}`, cx: x(i), cy: y(v), r: 3, "data-day": days[i], "data-value": v },
          s("title", {}, `${days[i]} ${l.name}: ${format(v)}`)));
      });
    }
    return h("figure", { class: "figure" }, svg, legend(series.map((l) => [l.cls, l.name])));
  }

  /// Stacked bars over days: `stacks` is `[{ name, cls, values: [count per day] }]`, bottom first.
  function bars(name, label, days, stacks) {
    const totals = days.map((_, i) => stacks.reduce((sum, st) => sum + st.values[i], 0));
    const max = 4 * step(Math.max(1, ...totals), false);
    const { svg, x, y } = frame(name, label, max, (v) => `${Math.round(v)}`, days, true);
    const width = Math.max(3, Math.min(28, ((W - PAD.l - PAD.r) / Math.max(1, days.length)) * 0.7));
    days.forEach((day, i) => {
      let base = 0;
      for (const st of stacks) {
        const v = st.values[i];
        if (v > 0) {
          svg.append(s("rect", { class: `bar ${st.cls}`, x: x(i) - width / 2, y: y(base + v), width, height: y(base) - y(base + v),
            "data-day": day, "data-value": v }, s("title", {}, `${day}: ${v} ${st.name}`)));
        }
        base += v;
      }
    });
    return h("figure", { class: "figure" }, svg, legend(stacks.map((st) => [st.cls, st.name])));
  }

  /// Horizontal bars of rates in [0, 1]: `rows` is `[{ name, value, detail }]`.
  function rates(name, label, rows) {
    const rowH = 26, height = rows.length * rowH + 8, left = 160;
    const svg = s("svg", { viewBox: `0 0 ${W} ${height}`, class: "chart", role: "img", "aria-label": label, "data-chart": name });
    rows.forEach((row, i) => {
      const y = 4 + i * rowH, width = (W - left - 70) * row.value;
      svg.append(s("text", { class: "tick", x: left - 8, y: y + 16, "text-anchor": "end" }, row.name),
        s("rect", { class: "bar track", x: left, y: y + 4, width: W - left - 70, height: 16 }),
        s("rect", { class: "bar succeeded", x: left, y: y + 4, width, height: 16, "data-value": row.value },
          s("title", {}, `${row.name}: ${row.detail}`)),
        s("text", { class: "tick", x: W - 64, y: y + 16 }, `${Math.round(row.value * 100)} %`));
    });
    return h("figure", { class: "figure" }, svg);
  }

  return { line, bars, rates, seconds };
})();
