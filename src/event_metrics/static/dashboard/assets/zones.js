// Times in an IANA zone, as GET /metrics cuts its buckets (docs/api.md, "Buckets"): the
// page needs them to show wall times, to read the custom range fields, and to place the
// buckets the API leaves out (no events) on the charts as zeros.

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const formatters = new Map();

function formatter(zone) {
  let found = formatters.get(zone);
  if (!found) {
    found = new Intl.DateTimeFormat("en-US", {
      timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
    formatters.set(zone, found);
  }
  return found;
}

/** The wall clock in `zone` at instant `ms`: {year, month, day, hour, minute, second}. */
export function wallClock(ms, zone) {
  const parts = {};
  for (const part of formatter(zone).formatToParts(ms)) {
    if (part.type !== "literal") parts[part.type] = Number(part.value);
  }
  return parts;
}

/** The zone's UTC offset at `ms`, in minutes east of UTC. */
export function offsetMinutes(ms, zone) {
  const w = wallClock(ms, zone);
  const asUtc = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
  return Math.round((asUtc - Math.floor(ms / 1000) * 1000) / MINUTE);
}

/** The instant at which the zone's clock reads this wall time (months from 1). A time
 * read twice (clocks going back) is its first instant; a time the clock skips (spring
 * forward) is the instant of the jump, as /metrics starts a day whose midnight is skipped. */
export function wallToInstant(year, month, day, hour, minute, second, zone) {
  const guess = Date.UTC(year, month - 1, day, hour, minute, second);
  const before = offsetMinutes(guess - 14 * HOUR, zone);
  const after = offsetMinutes(guess + 14 * HOUR, zone);
  const valid = [before, after]
    .map((offset) => guess - offset * MINUTE)
    .filter((t) => guess - offsetMinutes(t, zone) * MINUTE === t);
  if (valid.length) return Math.min(...valid);
  // In a gap: the jump lies between the two readings; find it to the minute.
  let low = Math.min(guess - before * MINUTE, guess - after * MINUTE);
  let high = Math.max(guess - before * MINUTE, guess - after * MINUTE);
  while (high - low > MINUTE) {
    const middle = Math.floor((low + high) / 2 / MINUTE) * MINUTE;
    if (offsetMinutes(middle, zone) === before) low = middle;
    else high = middle;
  }
  return high;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** `YYYY-MM-DDTHH:MM:SS` in the zone: the value of a datetime-local field. */
export function toLocalInput(ms, zone) {
  const w = wallClock(ms, zone);
  return `${pad(w.year, 4)}-${pad(w.month)}-${pad(w.day)}T${pad(w.hour)}:${pad(w.minute)}:${pad(w.second)}`;
}

/** The instant a datetime-local value names in the zone; NaN when it is not a time. */
export function fromLocalInput(value, zone) {
  const match = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d))?/.exec(value || "");
  if (!match) return NaN;
  const [, y, mo, d, h, mi, s] = match.map(Number);
  return wallToInstant(y, mo, d, h, mi, s || 0, zone);
}

/** RFC 3339 in UTC, whole seconds: what the URL and /metrics get. */
export function toRfc3339(ms) {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
}

/** Hour boundaries in [from, to): every instant at which the local clock reads HH:00,
 * and every offset change. A day whose offset does not change is done by arithmetic; a
 * day with a change is walked in 15-minute steps (offsets are whole quarter hours). */
function hourStarts(from, to, zone) {
  const starts = [];
  for (let day = from; day < to; day += DAY) {
    const end = Math.min(day + DAY, to);
    const offset = offsetMinutes(day, zone);
    if (offset === offsetMinutes(end, zone)) {
      const shift = offset * MINUTE;
      let t = Math.ceil((day + shift) / HOUR) * HOUR - shift;
      for (; t < end; t += HOUR) starts.push(t);
    } else {
      let t = Math.ceil(day / (15 * MINUTE)) * 15 * MINUTE;
      for (; t < end; t += 15 * MINUTE) {
        const w = wallClock(t, zone);
        if ((w.minute === 0 && w.second === 0) || offsetMinutes(t - 15 * MINUTE, zone) !==
            offsetMinutes(t, zone)) starts.push(t);
      }
    }
  }
  return starts;
}

/** Local midnights in [from, to) that begin a day, a week (Monday) or a month (the 1st). */
function calendarStarts(from, to, granularity, zone) {
  const starts = [];
  const w = wallClock(from, zone);
  for (let n = 0; ; n++) {
    const date = new Date(Date.UTC(w.year, w.month - 1, w.day + n));
    const t = wallToInstant(date.getUTCFullYear(), date.getUTCMonth() + 1, date.getUTCDate(),
      0, 0, 0, zone);
    if (t >= to) break;
    if (t < from) continue;
    if (granularity === "week" && date.getUTCDay() !== 1) continue;
    if (granularity === "month" && date.getUTCDate() !== 1) continue;
    starts.push(t);
  }
  return starts;
}

/** Where each bucket of the window begins, as instants (ms): `from` first (the first
 * bucket may start before the window on the calendar; the chart starts it at `from`),
 * then every boundary inside the window. */
export function bucketStarts(from, to, granularity, zone) {
  let inside = [];
  if (granularity === "hour") inside = hourStarts(from, to, zone);
  else if (granularity !== "total") inside = calendarStarts(from, to, granularity, zone);
  return [from, ...inside.filter((t) => t > from && t < to)];
}

/** The index of the last start at or before `ms` (the bucket holding it); 0 if before. */
export function bucketIndex(starts, ms) {
  let low = 0;
  let high = starts.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >> 1;
    if (starts[middle] <= ms) low = middle;
    else high = middle - 1;
  }
  return low;
}

/** The time zones the browser knows, with its own and the URL's among them. */
export function zoneNames(...wanted) {
  const names = new Set(typeof Intl.supportedValuesOf === "function"
    ? Intl.supportedValuesOf("timeZone") : []);
  names.add("UTC");
  for (const name of wanted) if (name) names.add(name);
  return [...names].sort();
}

export function browserZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}
