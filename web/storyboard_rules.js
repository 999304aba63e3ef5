// The storyboard's written forms and validation rules, mirrored from histenc/storyboard.py so the
// editor reports the backend's own sentences before a prompt is queued. Pure functions, no DOM:
// runs in the browser and under `node --test`.

const TIME = String.raw`-?\d+(?::\d+){0,2}(?:\.\d+)?`;
const LINE = new RegExp(String.raw`^(${TIME}s?)((?:\s|[-–|:,]).*)?$`);
const SEPARATORS = "-–|:,";
// Python's str.splitlines() boundaries, so line numbers agree with the backend's.
const LINE_BREAK = /(\r\n|[\n\v\f\r\x1c-\x1e\x85\u2028\u2029])/;

/** 62.5 -> "1:02.5", 4 -> "0:04": the text form's own time syntax (format_time). */
export function formatTime(seconds) {
  const sign = seconds < 0 ? "-" : "";
  const [whole, frac] = decimalParts(Math.abs(seconds));
  const minutes = whole / 60n;
  const rest = whole % 60n;
  return `${sign}${minutes}:${String(rest).padStart(2, "0")}${frac ? "." + frac : ""}`;
}

// Integer part (BigInt) and fraction digits of the shortest decimal that names the number, as
// Python's repr does, so 4.1 stays "4.1" rather than float noise.
function decimalParts(value) {
  let text = String(value);
  if (/e/i.test(text)) text = value.toFixed(20).replace(/\.?0+$/, "");
  const [whole, frac = ""] = text.split(".");
  return [BigInt(whole), frac];
}

/** "1:02.5" -> 62.5; "12.5" / "12.5s" are seconds. Throws an Error naming the text (parse_time). */
export function parseTime(text) {
  const raw = text.trim();
  const body = raw.endsWith("s") ? raw.slice(0, -1) : raw;
  if (!new RegExp(`^${TIME}$`).test(body)) {
    throw new Error(`time '${raw}' is not a time; write seconds (12.5) or minutes:seconds (1:02.5).`);
  }
  const sign = body.startsWith("-") ? -1 : 1;
  const parts = body.replace(/^-+/, "").split(":");
  for (const part of parts.slice(1)) {
    if (parseFloat(part) >= 60 || part.split(".")[0].length !== 2) {
      throw new Error(
        `time '${raw}' has '${part}' after a colon; write two-digit minutes and seconds below 60, like 1:02.5.`
      );
    }
  }
  return sign * parts.reduce((value, part) => value * 60 + parseFloat(part), 0);
}

/**
 * A written storyboard read into its form and cues, keeping everything else the user wrote:
 * { form: "text" | "json", cues: [{t, prompt, slot, where}], problems: [sentence], ... }.
 * `slot` is the line (text) or list entry (JSON) a cue came from, so edits rewrite only that slot.
 */
export function readStoryboard(text, seconds = null) {
  if (typeof text !== "string") {
    const kind = text === null ? "NoneType" : typeof text;
    return { form: "text", lines: [], breaks: [], cues: [], problems: [
      `storyboard must be text, got ${kind}; pass JSON or one '0:00 prompt' line per prompt.`] };
  }
  const stripped = pyStrip(text);
  const doc = "[{".includes(stripped.slice(0, 1)) && stripped ? readJson(stripped) : readText(text);
  const ordered = [...doc.found, ...cueProblems(doc.cues, seconds)].sort((a, b) => a[0] - b[0]);
  doc.problems = ordered.map(([, sentence]) => sentence);
  delete doc.found;
  if (!doc.cues.length && !doc.problems.length) {
    doc.problems.push("storyboard is empty; write at least one prompt, e.g. '0:00 a woman knits by the window'.");
  }
  for (const cue of doc.cues) cue.prompt = pyStrip(cue.prompt);
  return doc;
}

/** Every problem of a written storyboard, one sentence each; [] when valid (storyboard_problems). */
export function storyboardProblems(text, seconds = null) {
  return readStoryboard(text, seconds).problems;
}

function readText(text) {
  // Lines and the breaks between them are both kept, so an edit leaves every other byte as written.
  const pieces = text.split(LINE_BREAK);
  const lines = pieces.filter((_, i) => i % 2 === 0);
  const breaks = pieces.filter((_, i) => i % 2 === 1);
  const cues = [];
  const found = [];
  lines.forEach((line, i) => {
    const number = i + 1;
    const body = pyStrip(line);
    if (!body || body.startsWith("#")) return;
    const match = LINE.exec(body);
    if (!match) {
      found.push([number,
        `storyboard line ${number} ('${clip(body)}') does not start with a time; ` +
        "begin it with seconds or minutes:seconds, e.g. '0:04.5 she looks up'."]);
      return;
    }
    let t;
    try {
      t = parseTime(match[1]);
    } catch (err) {
      found.push([number, `storyboard line ${number}: ${err.message}`]);
      return;
    }
    const prompt = pyStrip(lstripChars(pyStrip(match[2] ?? ""), SEPARATORS));
    cues.push({ t, prompt, where: `line ${number}`, order: number, slot: i });
  });
  return { form: "text", lines, breaks, cues, found };
}

function readJson(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    const [line, column] = jsonErrorPlace(text, err);
    const why = String(err.message).replace(/ in JSON.*$/s, "").replace(/^JSON\.parse: /, "");
    return { form: "json", data: null, cues: [], found: [[0,
      `storyboard looks like JSON but line ${line} column ${column} is invalid (${why}); ` +
      "fix the JSON or write one '0:00 prompt' line per prompt."]] };
  }
  const fail = (sentence) => ({ form: "json", data: null, cues: [], found: [[0, sentence]] });
  let items = data;
  let globalPrompt = "";
  if (isObject(data)) {
    const keys = Object.keys(data).sort();
    const unknown = keys.filter((k) => k !== "global" && k !== "prompts");
    if (unknown.length || !Array.isArray(data.prompts)) {
      return fail('storyboard JSON object must be {"global": "...", "prompts": [...]}, ' +
        `got keys ${pyList(keys)}; or give just the list of prompts.`);
    }
    globalPrompt = pyFalsy(data.global) ? "" : data.global;
    if (typeof globalPrompt !== "string") {
      return fail('storyboard "global" must be text; write the global prompt as a string.');
    }
    items = data.prompts;
  }
  if (!Array.isArray(items)) {
    return fail('storyboard JSON must be a list of {"t": seconds, "prompt": text} entries.');
  }
  const cues = [];
  const found = [];
  items.forEach((item, i) => {
    const order = i + 1;
    const where = `entry ${order}`;
    const keys = isObject(item) ? Object.keys(item).sort() : [];
    if (keys.length !== 2 || keys[0] !== "prompt" || keys[1] !== "t") {
      found.push([order, `storyboard ${where} is ${clip(pyDumps(item))}; write it as {"t": 4.5, "prompt": "..."}.`]);
      return;
    }
    let t = item.t;
    if (typeof t === "string") {
      try {
        t = parseTime(t);
      } catch (err) {
        found.push([order, `storyboard ${where}: ${err.message}`]);
        return;
      }
    }
    if (typeof t !== "number" || !Number.isFinite(t)) {
      found.push([order, `storyboard ${where} has t = ${pyDumps(t)}; give the time as a number of seconds.`]);
      return;
    }
    if (typeof item.prompt !== "string") {
      found.push([order, `storyboard ${where} has a prompt that is not text (${pyDumps(item.prompt)}); quote it.`]);
      return;
    }
    cues.push({ t, prompt: item.prompt, where, order, slot: i });
  });
  return { form: "json", data, items, globalPrompt, multiline: text.includes("\n"), cues, found };
}

// Rules on the cues themselves: times non-negative, strictly increasing, inside the video; text present.
function cueProblems(cues, seconds) {
  const found = [];
  cues.forEach(({ t, prompt, where, order }, i) => {
    if (t < 0) {
      found.push([order, `storyboard ${where} has the negative time ${formatTime(t)}; times start at 0:00.`]);
    } else if (seconds !== null && seconds !== undefined && t > seconds) {
      found.push([order, pastEnd(where, t, seconds)]);
    }
    if (!pyStrip(String(prompt))) {
      found.push([order, `storyboard ${where} at ${formatTime(t)} has no prompt text; write what the video shows then.`]);
    }
    const prev = cues[i - 1];
    if (prev && t >= 0 && prev.t >= 0) {
      if (t === prev.t) {
        found.push([order,
          `storyboard ${where} repeats the time ${formatTime(t)} of ${prev.where}; give each prompt its own time.`]);
      } else if (t < prev.t) {
        found.push([order,
          `storyboard ${where} at ${formatTime(t)} comes before ${prev.where} at ${formatTime(prev.t)}; ` +
          "sort the prompts by time."]);
      }
    }
  });
  return found;
}

function pastEnd(where, t, seconds) {
  return `storyboard ${where} at ${formatTime(t)} is past the end of the ${formatTime(seconds)} video; ` +
    "lengthen the video or move the prompt earlier.";
}

/**
 * Section boundaries of a video, the same cut as schedule_sections: frames = round-half-up(seconds *
 * fps), latent frames = 1 + ceil((frames - 1) / stride), runs of `sectionFrames` latent frames.
 * Returns null when the settings cannot make a video (the sampler reports why when queued).
 */
export function scheduleSections(seconds, fps, sectionFrames, timeStride = 4) {
  const positive = (v) => typeof v === "number" && Number.isFinite(v) && v > 0;
  if (!positive(seconds) || !positive(fps) || !Number.isInteger(sectionFrames) || sectionFrames < 1) return null;
  const frames = Math.floor(seconds * fps + 0.5);
  if (frames < 1) return null;
  const latentFrames = 1 + Math.ceil((frames - 1) / timeStride);
  const pixel = (j) => (j === 0 ? 0 : timeStride * j - timeStride + 1);
  const sections = [];
  for (let start = 0; start < latentFrames; start += sectionFrames) {
    const end = Math.min(start + sectionFrames, latentFrames);
    const pixelStart = pixel(start);
    const pixelEnd = Math.min(pixel(end), frames);
    sections.push({ index: sections.length, latentStart: start, latentFrames: end - start,
      startS: pixelStart / fps, endS: pixelEnd / fps });
  }
  return { frames, latentFrames, duration: frames / fps, sections,
    boundaries: [...sections.map((s) => s.startS), sections[sections.length - 1].endS] };
}

// ---- Python look-alikes, so sentences read the same as the backend's ----

const PY_SPACE = /^[\s\x1c-\x1f\x85]+|[\s\x1c-\x1f\x85]+$/g;
function pyStrip(text) {
  return text.replace(PY_SPACE, "");
}

function lstripChars(text, chars) {
  let i = 0;
  while (i < text.length && chars.includes(text[i])) i++;
  return text.slice(i);
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function pyFalsy(value) {
  if (Array.isArray(value)) return value.length === 0;
  if (isObject(value)) return Object.keys(value).length === 0;
  return !value;
}

function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const body = text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\r/g, "\\r").replace(/\t/g, "\\t");
  return quote + (quote === "'" ? body.replace(/'/g, "\\'") : body) + quote;
}

function pyList(strings) {
  return `[${strings.map(pyRepr).join(", ")}]`;
}

/** json.dumps look-alike: ", " and ": " separators, non-ASCII as \uXXXX. */
export function pyDumps(value, asciiOnly = true) {
  const spaced = spaceSeparators(JSON.stringify(value === undefined ? null : value));
  return asciiOnly ? spaced.replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0")) : spaced;
}

// Adds Python's spaces after the separators JSON.stringify leaves bare, outside strings only.
function spaceSeparators(json) {
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

function jsonErrorPlace(text, err) {
  const at = /position (\d+)/.exec(String(err.message));
  const offset = at ? Math.min(Number(at[1]), text.length) : text.length;
  const before = text.slice(0, offset).split("\n");
  return [before.length, before[before.length - 1].length + 1];
}

function clip(text, n = 40) {
  return text.length <= n ? text : text.slice(0, n - 3) + "...";
}
