// The table of the answer's series rows: sortable by any column, downloadable as CSV.

// Beyond this many rows the page shows the first ones (as sorted); the CSV has them all.
export const MAX_ROWS_SHOWN = 500;
const number = new Intl.NumberFormat();

function columns(answer) {
  const list = [];
  if (answer.granularity !== "total") list.push({ key: "bucket_start", title: "Bucket", kind: "time" });
  for (const dimension of answer.group_by) {
    list.push({ key: dimension, title: dimension === "channel" ? "Channel" : "Event name", kind: "text" });
  }
  list.push({ key: "events", title: "Events", kind: "number" });
  list.push({ key: "unique_users", title: "Unique users", kind: "number" });
  return list;
}

/** How a bucket reads: its local date, and for hours the time and the UTC offset (two
 * 01:00 buckets on the night clocks go back differ only by it). */
function bucketText(value, granularity) {
  if (granularity !== "hour") return value.slice(0, 10);
  return `${value.slice(0, 10)} ${value.slice(11, 16)} (${value.slice(19) || "Z"})`;
}

function compare(column, direction) {
  const { key, kind } = column;
  return (a, b) => {
    let order;
    if (kind === "number") order = a[key] - b[key];
    else if (kind === "time") order = Date.parse(a[key]) - Date.parse(b[key]);
    else order = (a[key] ?? "") < (b[key] ?? "") ? -1 : (a[key] ?? "") > (b[key] ?? "") ? 1 : 0;
    return direction === "ascending" ? order : -order;
  };
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export class SeriesTable {
  constructor(table, note) {
    this.table = table;
    this.note = note;
    this.answer = null;
    this.sort = null; // {key, direction}; null: the API's order (by bucket, then group)
  }

  show(answer) {
    this.answer = answer;
    if (this.sort && !columns(answer).some((c) => c.key === this.sort.key)) this.sort = null;
    this.draw();
  }

  rows() {
    const rows = [...this.answer.series];
    if (this.sort) {
      const column = columns(this.answer).find((c) => c.key === this.sort.key);
      rows.sort(compare(column, this.sort.direction));
    }
    return rows;
  }

  sortBy(key) {
    const same = this.sort && this.sort.key === key;
    const numeric = key === "events" || key === "unique_users";
    let direction = numeric ? "descending" : "ascending";
    if (same) direction = this.sort.direction === "ascending" ? "descending" : "ascending";
    this.sort = { key, direction };
    this.draw();
    this.table.querySelector(`th[data-key="${key}"] button`).focus();
  }

  draw() {
    const answer = this.answer;
    const cols = columns(answer);
    const head = document.createElement("thead");
    const headRow = head.insertRow();
    for (const column of cols) {
      const th = document.createElement("th");
      th.scope = "col";
      th.dataset.key = column.key;
      if (column.kind === "number") th.className = "number";
      const sorted = this.sort && this.sort.key === column.key ? this.sort.direction : "none";
      th.setAttribute("aria-sort", sorted);
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = column.title;
      button.title = `Sort by ${column.title.toLowerCase()}`;
      button.addEventListener("click", () => this.sortBy(column.key));
      th.append(button);
      headRow.append(th);
    }
    const body = document.createElement("tbody");
    const rows = this.rows();
    for (const row of rows.slice(0, MAX_ROWS_SHOWN)) {
      const tr = body.insertRow();
      for (const column of cols) {
        const cell = tr.insertCell();
        const value = row[column.key];
        if (column.kind === "time") {
          const time = document.createElement("time");
          time.dateTime = value;
          time.textContent = bucketText(value, answer.granularity);
          cell.append(time);
        } else if (column.kind === "number") {
          cell.className = "number";
          cell.dataset.value = value;
          cell.textContent = number.format(value);
        } else {
          cell.textContent = value ?? (column.key === "channel" ? "(no channel)" : "(none)");
          if (value === null) cell.className = "missing";
        }
      }
    }
    this.table.replaceChildren(head, body);
    this.note.textContent = rows.length > MAX_ROWS_SHOWN
      ? `Showing the first ${number.format(MAX_ROWS_SHOWN)} of ${number.format(rows.length)} rows; the CSV has all of them.`
      : `${number.format(rows.length)} row${rows.length === 1 ? "" : "s"}.`;
  }

  /** The rows, as sorted, in CSV: the API's field names, empty for a missing channel. */
  csv() {
    const cols = columns(this.answer);
    const lines = [cols.map((c) => c.key).join(",")];
    for (const row of this.rows()) lines.push(cols.map((c) => csvCell(row[c.key])).join(","));
    return `${lines.join("\r\n")}\r\n`;
  }
}
