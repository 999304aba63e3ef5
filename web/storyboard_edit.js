// Edits of a written storyboard that keep the form the user chose: text stays text (comments, blank
// lines and untouched lines byte for byte), JSON stays JSON (invalid entries left where they are).
// No rules live here: which lines or entries are cues, and whether the text can be edited at all, come
// from the server's check of the text (a `doc`, see histenc/longvideo/storyboard.py describe_storyboard,
// with `text` added). Every edit returns the new text, where the edited cue went, and the doc as the
// edit leaves it, so further edits can follow before the server has checked the new text.

/** Whether the editor can change the text the server checked (JSON that does not parse is fixed in the text first). */
export function editable(doc) {
  return Boolean(doc?.editable);
}

/** Set cue `index` to {t, prompt} (either may be left out); cues are kept in time order. */
export function setCue(doc, index, { t, prompt }) {
  const cue = doc.cues[index];
  if (!cue || !editable(doc)) return unchanged(doc, index);
  const changed = { ...cue, t: t ?? cue.t, prompt: prompt ?? cue.prompt, edited: true };
  if (t !== undefined) changed.time = writeTime(changed.t);
  return write(doc, doc.cues.map((c, i) => (i === index ? changed : c)), t !== undefined);
}

/** Add a cue after the last one (then sorted into time order); returns its index. */
export function addCue(doc, t, prompt = "") {
  if (!editable(doc)) return unchanged(doc, -1);
  const fresh = { t, time: writeTime(t), prompt, edited: true, slot: null, problems: [] };
  return write(doc, [...doc.cues, fresh], true);
}

/** Remove cue `index`. */
export function removeCue(doc, index) {
  const cue = doc.cues[index];
  if (!cue || !editable(doc)) return unchanged(doc, -1);
  const next = Math.min(index, doc.cues.length - 2);
  const cues = doc.cues.filter((c) => c !== cue).map((c) => (c.slot > cue.slot ? { ...c, slot: c.slot - 1 } : c));
  if (doc.form === "text") {
    const lines = [...doc.lines];
    const breaks = [...doc.breaks];
    lines.splice(cue.slot, 1);
    breaks.splice(cue.slot < breaks.length ? cue.slot : cue.slot - 1, 1);
    return result(doc, { lines, breaks, cues }, joinLines(lines, breaks), next);
  }
  const json = readJson(doc.text);
  if (!json) return unchanged(doc, -1);
  json.items.splice(cue.slot, 1);
  return result(doc, { cues }, dumpJson(doc.text, json, json.items), next);
}

/**
 * `seconds` in the text form's m:ss syntax, the way the edits write a time into the storyboard
 * (62.5 -> "1:02.5", 4 -> "0:04"). Only a writer: the server reads the result back, and the times
 * the editor shows for the storyboard's cues come from the server.
 */
export function writeTime(seconds) {
  const sign = seconds < 0 ? "-" : "";
  const [whole, frac = ""] = Math.abs(seconds).toFixed(6).replace(/\.?0+$/, "").split(".");
  const minutes = BigInt(whole) / 60n;
  const rest = BigInt(whole) % 60n;
  return `${sign}${minutes}:${String(rest).padStart(2, "0")}${frac ? "." + frac : ""}`;
}

// Places `cues` into the document's cue slots (sorted by time when `sort`), rewriting only the
// slots whose content changed, and reports the new index of the edited cue.
function write(doc, cues, sort) {
  const order = cues.map((c, i) => i);
  if (sort) order.sort((a, b) => cues[a].t - cues[b].t); // stable: equal times keep their order
  const placed = order.map((i) => cues[i]);
  const index = placed.findIndex((c) => c.edited);
  const slots = doc.cues.map((c) => c.slot);
  return doc.form === "text" ? writeText(doc, placed, slots, index) : writeJson(doc, placed, slots, index);
}

function writeText(doc, placed, slots, index) {
  const lines = [...doc.lines];
  const breaks = [...doc.breaks];
  if (placed.length > slots.length) {
    // A new cue's line goes right after the last cue line (or at the end of an empty storyboard).
    const at = slots.length ? slots[slots.length - 1] + 1 : lines.length;
    if (lines.length === 1 && lines[0].trim() === "") {
      lines[0] = "";
      slots.push(0);
    } else {
      lines.splice(at, 0, "");
      breaks.splice(at - 1, 0, "\n");
      slots.push(at);
    }
  }
  const cues = placed.map((cue, i) => {
    lines[slots[i]] = cue.edited ? cueLine(cue) : doc.lines[cue.slot];
    return settle(cue, slots[i]);
  });
  return result(doc, { lines, breaks, cues }, joinLines(lines, breaks), index);
}

// An edited cue's line: its time as the server wrote it (or as the edit wrote a new one), then the prompt.
function cueLine(cue) {
  const prompt = String(cue.prompt).replace(/[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+/g, " "); // one line stays one
  return prompt ? `${cue.time} ${writePrompt(prompt)}` : cue.time;
}

/**
 * A prompt as the text form's line writes it (Storyboard.to_text's write_prompt): the server drops one
 * separator after a line's time when a space follows it, so a prompt that itself starts that way
 * ("- a list") gets one written before it. "-1 degree" needs none. Only a writer: the server reads it back.
 */
export function writePrompt(prompt) {
  return /^[-–|:,](\s|$)/u.test(prompt.trimStart()) ? `- ${prompt}` : prompt;
}

function joinLines(lines, breaks) {
  return lines.map((line, i) => line + (i < lines.length - 1 ? breaks[i] ?? "\n" : "")).join("");
}

function writeJson(doc, placed, slots, index) {
  const json = readJson(doc.text);
  if (!json) return unchanged(doc, -1);
  const items = [...json.items];
  if (placed.length > slots.length) {
    const at = slots.length ? slots[slots.length - 1] + 1 : items.length;
    items.splice(at, 0, null);
    slots.push(at);
  }
  const cues = placed.map((cue, i) => {
    const item = cue.slot === null || cue.slot === undefined ? undefined : json.items[cue.slot];
    if (!cue.edited) {
      items[slots[i]] = item;
    } else {
      // Keep a time written as "m:ss" text in that form; numbers stay numbers.
      const t = item && typeof item.t === "string" ? cue.time : cue.t;
      items[slots[i]] = { ...(item ?? {}), t, prompt: cue.prompt };
    }
    return settle(cue, slots[i]);
  });
  return result(doc, { cues }, dumpJson(doc.text, json, items), index);
}

// The JSON the server found editable, parsed again to rewrite it: {data, items}, or null.
function readJson(text) {
  try {
    const data = JSON.parse(text.trim());
    const items = Array.isArray(data) ? data : data?.prompts;
    return Array.isArray(items) ? { data, items } : null;
  } catch {
    return null;
  }
}

function dumpJson(text, { data }, items) {
  const out = Array.isArray(data) ? items : { ...data, prompts: items };
  // Pretty-printed JSON stays pretty-printed; one-line JSON keeps ", " and ": " separators.
  return text.includes("\n") ? JSON.stringify(out, null, 2) : spaced(JSON.stringify(out));
}

// Adds a space after the separators JSON.stringify leaves bare, outside strings only.
function spaced(json) {
  let out = "";
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    out += c;
    if (inString) {
      if (c === "\\") out += json[++i];
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if (c === "," || c === ":") {
      out += " ";
    }
  }
  return out;
}

function settle(cue, slot) {
  const { edited, ...rest } = cue;
  return { ...rest, slot, where: undefined };
}

// The edit's outcome: the doc as the edit leaves it is marked `pending` (the server has not read it;
// its problems, sections and exports are those of the text before the edit).
function result(doc, changes, text, index) {
  return { text, index, doc: { ...doc, ...changes, text, pending: true, exports: null } };
}

function unchanged(doc, index) {
  return { text: doc.text, index, doc };
}
