// Unit tests of the editor's pure parts: `node --test tests/web/` (no npm packages needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import { addCue, exportJson, removeCue, setCue } from "../../web/storyboard_edit.js";
import { formatTime, parseTime, readStoryboard, scheduleSections } from "../../web/storyboard_rules.js";

test("times are written and read like the backend", () => {
  assert.equal(formatTime(62.5), "1:02.5");
  assert.equal(formatTime(4), "0:04");
  assert.equal(formatTime(4.1), "0:04.1");
  assert.equal(formatTime(3723.25), "62:03.25");
  assert.equal(parseTime("1:02.5"), 62.5);
  assert.equal(parseTime("12.5s"), 12.5);
  assert.equal(parseTime("1:00:03"), 3603);
  assert.throws(() => parseTime("1:5"), /two-digit minutes/);
});

test("a retime in the text form rewrites only that line and keeps comments and line breaks", () => {
  const text = "# scene one\r\n0:00 a lighthouse\r\n\r\n12.5s - a storm\r\n0:30 gulls\n";
  const { text: out, index } = setCue(text, 1, { t: 14 });
  assert.equal(out, "# scene one\r\n0:00 a lighthouse\r\n\r\n0:14 a storm\r\n0:30 gulls\n");
  assert.equal(index, 1);
});

test("a retime past a neighbour keeps the prompts in time order and follows the moved cue", () => {
  const text = "0:00 a\n# keep me\n0:10 b\n0:20 c";
  const { text: out, index } = setCue(text, 0, { t: 15 });
  assert.equal(out, "0:10 b\n# keep me\n0:15 a\n0:20 c");
  assert.equal(index, 1);
});

test("equal times stay in the order they were, so the backend's 'repeats the time' sentence shows", () => {
  const { text } = setCue("0:00 a\n0:10 b", 1, { t: 0 });
  assert.equal(text, "0:00 a\n0:00 b");
  assert.deepEqual(readStoryboard(text).problems,
    ["storyboard line 2 repeats the time 0:00 of line 1; give each prompt its own time."]);
});

test("editing a prompt leaves its time and the other lines alone", () => {
  const { text, index } = setCue("0:00 a\n0:10 b", 1, { prompt: "a ship " });
  assert.equal(text, "0:00 a\n0:10 a ship ");
  assert.equal(index, 1);
  assert.equal(readStoryboard(text).cues[1].prompt, "a ship");
});

test("add puts a new line after the last prompt, sorted by time; remove drops the line", () => {
  let { text, index } = addCue("0:00 a\n0:20 c\n", 10, "b");
  assert.equal(text, "0:00 a\n0:10 b\n0:20 c\n");
  assert.equal(index, 1);
  ({ text, index } = addCue("", 0));
  assert.equal(text, "0:00");
  assert.deepEqual(readStoryboard(text).problems,
    ["storyboard line 1 at 0:00 has no prompt text; write what the video shows then."]);
  ({ text, index } = removeCue("0:00 a\n0:10 b\n0:20 c", 2));
  assert.equal(text, "0:00 a\n0:10 b");
  assert.equal(index, 1);
  ({ text } = removeCue("0:00 a\n0:10 b\n0:20 c", 0));
  assert.equal(text, "0:10 b\n0:20 c");
});

test("the JSON form stays JSON, keeping string times and invalid entries in place", () => {
  const text = '{"global": "film", "prompts": [{"t": "0:00", "prompt": "a"}, 7, {"t": 9, "prompt": "b"}]}';
  const { text: out } = setCue(text, 1, { t: 4.5 });
  assert.equal(out, '{"global": "film", "prompts": [{"t": "0:00", "prompt": "a"}, 7, {"t": 4.5, "prompt": "b"}]}');
  const added = addCue('[\n  {"t": 0, "prompt": "a"}\n]', 2, "b").text;
  assert.deepEqual(JSON.parse(added), [{ t: 0, prompt: "a" }, { t: 2, prompt: "b" }]);
  assert.ok(added.includes("\n  "), "pretty-printed JSON stays pretty-printed");
  assert.equal(removeCue('[{"t": 0, "prompt": "a"}, {"t": 2, "prompt": "b"}]', 0).text, '[{"t": 2, "prompt": "b"}]');
});

test("JSON that does not parse is not edited", () => {
  const broken = '[{"t": 0, "prompt": "a"';
  assert.equal(setCue(broken, 0, { t: 1 }).text, broken);
  assert.equal(addCue(broken, 1, "x").text, broken);
});

test("export writes the backend's to_json form", () => {
  assert.equal(exportJson("0:00 a\n0:04.5 b"), '[{"t": 0.0, "prompt": "a"}, {"t": 4.5, "prompt": "b"}]');
  assert.equal(exportJson('{"global": "film", "prompts": [{"t": 1, "prompt": "a"}]}'),
    '{"global": "film", "prompts": [{"t": 1.0, "prompt": "a"}]}');
});

test("sections are cut like schedule_sections", () => {
  // 2 s at 16 fps: 32 frames, 9 latent frames; runs of 4 -> 4, 4, 1.
  const s = scheduleSections(2, 16, 4);
  assert.equal(s.frames, 32);
  assert.equal(s.latentFrames, 9);
  assert.deepEqual(s.sections.map((x) => x.latentFrames), [4, 4, 1]);
  assert.deepEqual(s.boundaries, [0, 13 / 16, 29 / 16, 2]);
  assert.equal(scheduleSections(0, 16, 4), null);
  // 60 s at 16 fps, 9 latent frames a section: 960 frames, 241 latent frames, 27 sections.
  const minute = scheduleSections(60, 16, 9);
  assert.equal(minute.sections.length, 27);
  assert.equal(minute.boundaries.at(-1), 60);
});
