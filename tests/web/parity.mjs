// Reads [[text, seconds], ...] as JSON on stdin and prints the editor's problem sentences for each,
// so tests/web/test_rules_parity.py can hold them against histenc.storyboard.storyboard_problems.
import { storyboardProblems } from "../../web/storyboard_rules.js";

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const cases = JSON.parse(input);
  process.stdout.write(JSON.stringify(cases.map(([text, seconds]) => storyboardProblems(text, seconds))));
});
