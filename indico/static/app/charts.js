/*
 * indico's charts: small SVG drawings, no library. Every label goes in as text
 * (createElementNS + textContent), colours come from app.css classes (the CSP
 * allows no inline style). Exposes window.IndicoCharts.
 */
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function node(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) {
      element.setAttribute(key, String(value));
    }
    if (parent) parent.appendChild(element);
    return element;
  }

  function text(parent, x, y, content, attributes) {
    const element = node("text", Object.assign({x: x, y: y}, attributes || {}), parent);
    element.textContent = content;
    return element;
  }

  // Draw at the container's own width, so that 12 px text stays 12 px on a phone.
  function widthOf(container) {
    return Math.max(280, Math.min(900, Math.round(container.clientWidth || 600)));
  }

  function frame(container, width, height, label) {
    container.replaceChildren();
    const svg = node("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": label, preserveAspectRatio: "xMidYMid meet"});
    node("title", {}, svg).textContent = label;
    container.appendChild(svg);
    return svg;
  }

  // Round tick values (1, 2 or 5 times a power of ten) that cover [low, high].
  function ticks(low, high, count) {
    if (!(high > low)) { high = low + 1; }
    const raw = (high - low) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const values = [];
    for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) {
      values.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return values;
  }

  /**
   * Horizontal bars, one per item, widths proportional to the values (0..max).
   * items: [{label, value}]; format(value) gives the bar's text.
   */
  function bars(container, items, format, label) {
    const rowHeight = 28;
    const width = widthOf(container);
    const left = 70;
    const right = 70;
    const height = items.length * rowHeight + 8;
    const svg = frame(container, width, height, label);
    const max = Math.max(1e-12, ...items.map((item) => item.value));
    items.forEach((item, index) => {
      const y = 4 + index * rowHeight;
      const length = Math.max(0, item.value) / max * (width - left - right);
      text(svg, left - 8, y + rowHeight / 2 + 4, item.label, {"text-anchor": "end",
                                                              class: "bar-label"});
      node("rect", {x: left, y: y + 4, width: length.toFixed(1), height: rowHeight - 8,
                    class: "bar"}, svg);
      text(svg, left + length + 6, y + rowHeight / 2 + 4, format(item.value),
           {class: "bar-label"});
    });
    return svg;
  }

  // Where each legend entry goes: left to right, on as many rows of 18 px as it takes.
  function legendPlaces(series, left, right) {
    let x = left;
    let row = 0;
    return series.map((line) => {
      const length = 32 + line.name.length * 7;
      if (x > left && x + length - 16 > right) {
        x = left;
        row += 1;
      }
      const place = {x: x, y: 8 + row * 18};
      x += length;
      return place;
    });
  }

  /**
   * Lines over dates. dates: ["YYYY-MM-DD", ...]; series: [{name, values, className,
   * area}] (area: filled down to 0; a value that is not a number leaves its date
   * out of that line); format(value) labels the y axis. The legend wraps.
   */
  function lines(container, dates, series, format, label) {
    const width = widthOf(container);
    const legend = legendPlaces(series, 64, width - 12);
    const legendRows = legend.length ? legend[legend.length - 1].y / 18 : 0;
    const height = Math.round(Math.max(200, Math.min(320, width * 0.45)) + legendRows * 18);
    const pad = {left: 64, right: 12, top: 28 + legendRows * 18, bottom: 26};
    const svg = frame(container, width, height, label);
    const times = dates.map((d) => Date.parse(d + "T00:00:00Z"));
    const all = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
    if (series.some((s) => s.area)) all.push(0);
    const yTicks = ticks(Math.min(...all), Math.max(...all), 5);
    const yLow = Math.min(yTicks[0], ...all);
    const yHigh = Math.max(yTicks[yTicks.length - 1], ...all);
    const t0 = times[0];
    const t1 = times[times.length - 1] > t0 ? times[times.length - 1] : t0 + 1;
    const x = (t) => pad.left + (t - t0) / (t1 - t0) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (yHigh - v) / ((yHigh - yLow) || 1) * (height - pad.top - pad.bottom);

    for (const value of yTicks) {
      node("line", {x1: pad.left, x2: width - pad.right, y1: y(value).toFixed(1),
                    y2: y(value).toFixed(1), class: "axis"}, svg);
      text(svg, pad.left - 6, y(value) + 4, format(value), {"text-anchor": "end"});
    }
    const firstYear = new Date(t0).getUTCFullYear();
    const lastYear = new Date(t1).getUTCFullYear();
    const every = Math.max(1, Math.ceil((lastYear - firstYear + 1) / 8));
    for (let year = firstYear + 1; year <= lastYear; year += every) {
      const t = Date.UTC(year, 0, 1);
      if (t <= t0 || t > t1) continue;
      node("line", {x1: x(t).toFixed(1), x2: x(t).toFixed(1), y1: pad.top,
                    y2: height - pad.bottom, class: "axis"}, svg);
      text(svg, x(t), height - 8, String(year), {"text-anchor": "middle"});
    }
    series.forEach((line, index) => {
      const points = line.values.flatMap((v, i) => Number.isFinite(v)
        ? [`${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`] : []);
      if (line.area) {
        const base = y(0).toFixed(1);
        points.unshift(`${x(times[0]).toFixed(1)},${base}`);
        points.push(`${x(times[times.length - 1]).toFixed(1)},${base}`);
        node("polygon", {points: points.join(" "), class: line.className}, svg);
      } else {
        node("polyline", {points: points.join(" "), class: line.className}, svg);
      }
      const place = legend[index];
      node("rect", {x: place.x, y: place.y, width: 12, height: 12,
                    class: "swatch-" + line.className}, svg);
      const name = text(svg, place.x + 16, place.y + 10, line.name);
      name.setAttribute("class", "legend");
    });
    return svg;
  }

  /**
   * The efficient frontier: expected return (y) against volatility (x), both annual.
   * curve: portfolio/frontier's answer ({points, corners, ...}, each portfolio with
   * expected_return and volatility); chosen: the same two of the shown result, or null.
   */
  function frontier(container, curve, chosen, label) {
    const width = widthOf(container);
    const height = Math.round(Math.max(220, Math.min(340, width * 0.5)));
    const pad = {left: 56, right: 16, top: 28, bottom: 34};
    const svg = frame(container, width, height, label);
    const all = curve.points.concat(chosen ? [chosen] : []);
    const xs = all.map((p) => p.volatility).filter(Number.isFinite);
    const ys = all.map((p) => p.expected_return).filter(Number.isFinite);
    const xTicks = ticks(Math.min(...xs), Math.max(...xs), 5);
    const yTicks = ticks(Math.min(...ys), Math.max(...ys), 5);
    const xLow = Math.min(xTicks[0], ...xs);
    const xHigh = Math.max(xTicks[xTicks.length - 1], ...xs);
    const yLow = Math.min(yTicks[0], ...ys);
    const yHigh = Math.max(yTicks[yTicks.length - 1], ...ys);
    const x = (v) => pad.left + (v - xLow) / ((xHigh - xLow) || 1) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (yHigh - v) / ((yHigh - yLow) || 1) * (height - pad.top - pad.bottom);
    // As many decimals as the tick step needs (0.5 % steps need one).
    const decimals = (values) => (values.length > 1 && (values[1] - values[0]) * 100 < 1 ? 1 : 0);
    const xPercent = (v) => (v * 100).toFixed(decimals(xTicks)) + " %";
    const yPercent = (v) => (v * 100).toFixed(decimals(yTicks)) + " %";
    for (const value of yTicks) {
      node("line", {x1: pad.left, x2: width - pad.right, y1: y(value).toFixed(1),
                    y2: y(value).toFixed(1), class: "axis"}, svg);
      text(svg, pad.left - 6, y(value) + 4, yPercent(value), {"text-anchor": "end"});
    }
    for (const value of xTicks) {
      node("line", {x1: x(value).toFixed(1), x2: x(value).toFixed(1), y1: pad.top,
                    y2: height - pad.bottom, class: "axis"}, svg);
      text(svg, x(value), height - pad.bottom + 16, xPercent(value), {"text-anchor": "middle"});
    }
    text(svg, width - pad.right, height - 4, "volatility (a year)", {"text-anchor": "end"});
    text(svg, pad.left, 18, "expected return (a year)", {"text-anchor": "start"});
    const points = curve.points.map((p) => `${x(p.volatility).toFixed(1)},${y(p.expected_return).toFixed(1)}`);
    node("polyline", {points: points.join(" "), class: "frontier"}, svg);
    for (const corner of curve.corners || []) {
      node("circle", {cx: x(corner.volatility).toFixed(1), cy: y(corner.expected_return).toFixed(1),
                      r: 3, class: "corner"}, svg);
    }
    if (chosen) {
      node("circle", {cx: x(chosen.volatility).toFixed(1), cy: y(chosen.expected_return).toFixed(1),
                      r: 6, class: "chosen"}, svg);
    }
    return svg;
  }

  window.IndicoCharts = {bars: bars, lines: lines, frontier: frontier};
})();
