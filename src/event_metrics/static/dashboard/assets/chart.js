// The two time-series charts (events, unique users), one line per group, drawn by uPlot.

import { bucketIndex, bucketStarts } from "./zones.js";

// Okabe & Ito's palette, told apart with every kind of colour blindness; past eight
// groups the lines are dashed as well. Yellow last: it is faint on white.
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9",
  "#000000", "#F0E442"];
const DASHES = [[], [8, 4], [2, 3], [10, 3, 2, 3]];
// More lines than this are unreadable; the table holds every group.
export const MAX_LINES = 16;

export function groupLabel(row, dimensions) {
  if (!dimensions.length) return "All";
  return dimensions.map((d) => row[d] ?? (d === "channel" ? "(no channel)" : "(none)")).join(" · ");
}

/** x (seconds) and one events and one users array per group, zeros where a group had no
 * events in a bucket (the API leaves such rows out); groups with most events first. */
export function chartData(answer, fromMs, toMs) {
  const starts = bucketStarts(fromMs, toMs, answer.granularity, answer.timezone);
  const dimensions = answer.group_by;
  const groups = new Map();
  for (const row of answer.series) {
    const label = groupLabel(row, dimensions);
    let group = groups.get(label);
    if (!group) {
      group = { label, total: 0, events: new Array(starts.length).fill(0),
        users: new Array(starts.length).fill(0) };
      groups.set(label, group);
    }
    const at = bucketIndex(starts, Math.max(Date.parse(row.bucket_start), fromMs));
    group.events[at] += row.events;
    group.users[at] = row.unique_users;
    group.total += row.events;
  }
  const ordered = [...groups.values()].sort((a, b) => b.total - a.total ||
    (a.label < b.label ? -1 : 1));
  return { xs: starts.map((t) => t / 1000), groups: ordered.slice(0, MAX_LINES),
    hidden: Math.max(0, ordered.length - MAX_LINES) };
}

const compact = new Intl.NumberFormat(undefined, { notation: "compact" });
const DAY_S = 86400;
// Time axis steps (seconds), none finer than the buckets: daily buckets get date ticks.
const STEPS = [3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, DAY_S, 2 * DAY_S, 3 * DAY_S,
  7 * DAY_S, 14 * DAY_S, 30 * DAY_S, 91 * DAY_S, 182 * DAY_S, 365 * DAY_S];
const FINEST = { hour: 3600, day: DAY_S, week: 7 * DAY_S, month: 30 * DAY_S };
// Counts are whole: no ticks at 2.5 events.
const COUNT_STEPS = Array.from({ length: 30 }, (_, n) => [1, 2, 5][n % 3] * 10 ** Math.floor(n / 3));

function options(width, zone, granularity, groups, pointsShown, dense) {
  const steps = STEPS.filter((step) => step >= (FINEST[granularity] || 3600));
  return {
    width, height: width < 500 ? 200 : 260,
    tzDate: (seconds) => window.uPlot.tzDate(new Date(seconds * 1000), zone),
    cursor: { drag: { x: true, y: false } },
    legend: { live: true },
    hooks: { draw: [() => performance.mark("em-chart-drawn")] },
    scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max) * 1.05] } },
    axes: [{ incrs: steps, space: 50 }, { size: 56, incrs: COUNT_STEPS, values: (_u, ticks) => ticks.map((v) => compact.format(v)) }],
    series: [
      { label: "Time" },
      ...groups.map((group, n) => ({
        label: group.label,
        stroke: PALETTE[n % PALETTE.length],
        dash: DASHES[Math.floor(n / PALETTE.length) % DASHES.length],
        // Dense lines at 1 px: software rasterising (no GPU) of 2 px ones over 30,000
        // points took 1.5 s instead of 0.3 (docs/benchmarks.md, "Dashboard").
        width: dense ? 1 : 2,
        points: { show: pointsShown },
      })),
    ],
  };
}

/** The events and users charts in their containers, replaced on every answer. */
export class Charts {
  constructor(eventsBox, usersBox) {
    this.boxes = [eventsBox, usersBox];
    this.plots = [];
    new ResizeObserver(() => this.fit()).observe(eventsBox);
  }

  width() {
    return Math.max(240, Math.floor(this.boxes[0].getBoundingClientRect().width));
  }

  render(data, zone, granularity) {
    this.clear();
    const width = this.width();
    const few = data.xs.length <= 60;
    const sets = [["Events", (g) => g.events], ["Unique users", (g) => g.users]];
    sets.forEach(([title, pick], n) => {
      const box = this.boxes[n];
      const dense = data.xs.length > 400;
      const opts = options(width, zone, granularity, data.groups, few, dense);
      this.plots.push(new window.uPlot(opts, [data.xs, ...data.groups.map(pick)], box));
      const lines = data.groups.length;
      box.setAttribute("aria-label", `${title} per bucket, ${lines} line${lines === 1 ? "" : "s"}` +
        ` over ${data.xs.length} buckets; the table below has the numbers`);
    });
  }

  fit() {
    const width = this.width();
    for (const plot of this.plots) {
      if (Math.abs(plot.width - width) > 1) plot.setSize({ width, height: width < 500 ? 200 : 260 });
    }
  }

  clear() {
    for (const plot of this.plots) plot.destroy();
    this.plots = [];
  }
}
