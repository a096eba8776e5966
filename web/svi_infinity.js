// SVI Infinity canvas extension: a per-clip prompt editor and a live clip timeline on the SVI Long Video node.
//
// The editor is a view of the node's own "prompts" widget (plain text, one prompt per line, one line per clip, each
// optionally followed by "| repeat=2 style=0.6 seed=1 end=x.png drift=off"): every edit is written back to that widget,
// so a saved workflow (UI or API format) keeps the prompts and a workflow saved without this extension still runs. Each
// row shows its prompt, its settings (checked as svi/plan.py checks them) and the clips and time range it makes. The timeline draws the pack's own "svi-infinity.clip" server messages (sent by
// pipeline/long_video.py as each clip is queued, steps, finishes or fails); nothing polls.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "svi-infinity.canvas";
const NODE_TYPE = "SVILongVideo";
const CLIP_EVENT = "svi-infinity.clip";
const EDITOR_WIDGET = "svi_clip_editor";
// Latent frames each "motion" choice carries into the next clip (2.0 Pro); matches nodes/svi_nodes.py MOTION_CHOICES.
const MOTION_LATENT_FRAMES = { "4 frames (1 latent frame)": 1, "8 frames (2 latent frames)": 2, "12 frames (3 latent frames)": 3 };
const ICONS = {
  up: '<svg viewBox="0 0 24 24"><polyline points="6 15 12 9 18 15"/></svg>',
  down: '<svg viewBox="0 0 24 24"><polyline points="6 9 12 15 18 9"/></svg>',
  duplicate: '<svg viewBox="0 0 24 24"><rect x="9" y="9" width="12" height="12" rx="2"/><path d="M5 15V5a2 2 0 0 1 2-2h10"/></svg>',
  remove: '<svg viewBox="0 0 24 24"><line x1="18" y1="6" x2="6" y2="18"/><line x1="6" y1="6" x2="18" y2="18"/></svg>',
};

// Mode names older saved workflows hold (svi/conditioning.py LEGACY_MODE_NAMES): shown and stored as the current name.
export const LEGACY_MODES = { "1.0 Shot/Dance/Talk (pixel motion, reference padding)": "1.0 Shot / 2.0 on Wan 2.1 (pixel motion, reference padding)" };
const MODE_NODES = new Set(["SVIConditioning", "SVIJoinClips", "SVILongVideo", "SVIDriftControl"]);
// Per-line settings after "|" (svi/plan.py _SETTING_PARSERS), with what each accepts.
const SETTINGS = {
  repeat: (v) => (/^\d+$/.test(v) && Number(v) >= 1 ? null : "must be a whole number of at least 1"),
  style: (v) => (v !== "" && Number.isFinite(Number(v)) && Math.abs(Number(v)) <= 10 ? null : "must be a number between -10 and 10"),
  seed: (v) => (/^\d+$/.test(v) ? null : "must be a whole number of at least 0"),
  end: (v) => (v.trim() ? null : "needs an image file name"),
  drift: (v) => (["off", "reference", "seam"].includes(v) ? null : "must be one of off, reference, seam"),
};

// ---------------------------------------------------------------- pure helpers (the clip plan, as the server makes it)

/** The stored lines: one per clip (or per `repeat` clips); blank lines are ignored (svi/plan.py parse_schedule). */
export function parsePrompts(text) {
  return String(text ?? "").split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "");
}

/** Splits "name=value name="a value"" the way the server's shlex does for these settings. */
function settingWords(text) {
  const words = [];
  const pattern = /\s*(?:([^\s"']*)"([^"]*)"|([^\s"']*)'([^']*)'|(\S+))/gy;
  let match;
  while ((match = pattern.exec(text)) && match[0].trim() !== "") {
    words.push(match[5] ?? (match[1] ?? match[3] ?? "") + (match[2] ?? match[4] ?? ""));
  }
  return words;
}

/** One line -> {prompt, settingsText, settings, error}: the prompt before "|", the settings after it, and what is wrong. */
export function parseLine(line) {
  const cut = String(line).indexOf("|");
  const prompt = (cut < 0 ? line : line.slice(0, cut)).trim();
  const settingsText = cut < 0 ? "" : line.slice(cut + 1).trim();
  const settings = {};
  let error = prompt ? null : "the prompt is empty";
  if (cut >= 0 && !settingsText && !error) error = "nothing after '|'";
  for (const word of settingWords(settingsText)) {
    if (error) break;
    const eq = word.indexOf("=");
    const name = eq < 0 ? word : word.slice(0, eq);
    const value = eq < 0 ? "" : word.slice(eq + 1);
    if (eq < 0) error = `'${word}' is not a setting; write name=value`;
    else if (!(name in SETTINGS)) error = `unknown setting '${name}'; known: ${Object.keys(SETTINGS).join(", ")}`;
    else if (name in settings) error = `${name} is set twice`;
    else {
      const wrong = SETTINGS[name](value);
      if (wrong) error = `${name}=${value} ${wrong}`;
      else settings[name] = name === "style" || name === "repeat" ? Number(value) : value;
    }
  }
  return { prompt, settingsText, settings, error };
}

/** The line again from its prompt and settings text. */
export function joinLine(prompt, settingsText) {
  const settings = String(settingsText ?? "").trim();
  return settings ? `${prompt} | ${settings}` : prompt;
}

/** Clips each line makes in a row: its repeat=, else the node's prompt_repeat (svi/plan.py plan_clips). */
export function lineClips(lines, promptRepeat = 1) {
  return lines.map((line) => parseLine(line).settings.repeat ?? Math.max(1, Number(promptRepeat) || 1));
}

/** [first, last] clip index each line makes the first time through, or null when num_clips ends before it. */
export function lineSpans(lines, { numClips, promptRepeat }) {
  let next = 0;
  return lineClips(lines, promptRepeat).map((count) => {
    const first = next;
    next += count;
    return first < numClips ? [first, Math.min(next, numClips) - 1] : null;
  });
}

/** Frames each clip adds after the first: its length less what it shares with the previous clip (svi/seams.py). */
export function clipStep({ length, mode, motion, conditioningFrames }) {
  const latentMotion = String(mode).startsWith("2.0 Pro");
  const shared = latentMotion ? 1 + 4 * (MOTION_LATENT_FRAMES[motion] ?? 1) : conditioningFrames;
  return Math.max(1, length - shared);
}

/** [start, end) in seconds of clip `index` in the stitched video. */
export function clipRange(index, settings) {
  const step = clipStep(settings);
  const start = index === 0 ? 0 : settings.length + (index - 1) * step;
  const end = index === 0 ? settings.length : start + step;
  return [start / settings.fps, end / settings.fps];
}

export function formatSeconds(seconds) {
  if (seconds < 60) return `${Number(seconds.toFixed(1))} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${String(Math.round(seconds - 60 * minutes)).padStart(2, "0")}`;
}

function formatRange([start, end]) {
  return end < 60 ? `${Number(start.toFixed(1))}–${formatSeconds(end)}` : `${formatSeconds(start)}–${formatSeconds(end)}`;
}

// ---------------------------------------------------------------- node plumbing

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function value(node, name, fallback) {
  const w = widget(node, name);
  return w === undefined || w.value === undefined || w.value === null ? fallback : w.value;
}

function settingsOf(node) {
  return {
    length: Number(value(node, "length", 81)),
    fps: Number(value(node, "fps", 16)) || 16,
    mode: String(value(node, "mode", "2.0")),
    motion: String(value(node, "motion", "")),
    conditioningFrames: Number(value(node, "conditioning_frames", 5)),
    numClips: Math.max(1, Number(value(node, "num_clips", 1))),
    overflow: String(value(node, "prompt_overflow", "cycle through the list")),
    promptRepeat: Math.max(1, Number(value(node, "prompt_repeat", 1)) || 1),
  };
}

function promptsLinked(node) {
  return Boolean(node.inputs?.some((input) => input.widget?.name === "prompts" && input.link != null));
}

/** Tells the frontend the graph changed: the workflow is marked modified, kept for reload and undo. (Typing needs no
 * call: the frontend's change tracker already looks at the graph after every key.) */
function graphChanged(node, { typed = false } = {}) {
  node.setDirtyCanvas?.(true, true);
  if (typed) return;
  try {
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.captureCanvasState?.();
  } catch (error) {
    console.debug("[svi-infinity] change tracker", error);
  }
}

function setWidget(node, name, next) {
  const w = widget(node, name);
  if (!w || w.value === next) return;
  const old = w.value;
  w.value = next;
  w.callback?.(next, app.canvas, node);
  node.onWidgetChanged?.(name, next, old, w);
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function iconButton(icon, title, onClick, disabled = false) {
  const button = element("button", "svi-icon");
  button.type = "button";
  button.innerHTML = ICONS[icon];
  button.title = title;
  button.setAttribute("aria-label", title);
  button.dataset.action = icon;
  button.disabled = disabled;
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    onClick();
  });
  return button;
}

function viewUrl(subfolder, filename, nonce) {
  const query = new URLSearchParams({ filename, subfolder: subfolder ?? "", type: "output" });
  if (nonce) query.set("t", String(nonce));
  return api.apiURL(`/view?${query}`);
}

// ---------------------------------------------------------------- the editor and timeline of one node

class ClipEditor {
  constructor(node) {
    this.node = node;
    this.prompts = widget(node, "prompts");
    this.clips = []; // the timeline: one server payload per clip
    this.resetOnNextEvent = false;
    this.playing = null;
    this.signature = null;
    this.measured = 0;

    this.root = element("div", "svi-root");
    this.content = element("div", "svi-content");
    this.head = element("div", "svi-head");
    this.rows = element("div", "svi-rows");
    this.footer = element("div", "svi-note");
    this.add = element("button", "svi-button svi-add", "+ Add clip");
    this.add.type = "button";
    this.add.addEventListener("click", () => this.edit((list) => list.push(list[list.length - 1] ?? "a new shot"), (list) => list.length - 1));
    this.timeline = element("div", "svi-timeline");
    this.player = element("div", "svi-player");
    this.content.append(this.head, this.rows, this.add, this.footer, this.timeline, this.player);
    this.root.append(this.content);
    let width = 0;
    this.resizeObserver = new ResizeObserver(() => { // the prompts wrap anew when the node is resized or first shown
      if (this.rows.offsetWidth !== width) {
        width = this.rows.offsetWidth;
        this.growAll();
      }
    });
    this.resizeObserver.observe(this.rows);

    this.widget = node.addDOMWidget(EDITOR_WIDGET, "svi-clip-editor", this.root, {
      serialize: false, // after every stored widget, so widgets_values keeps the order a graph without it reads
      getMinHeight: () => this.minHeight(),
    });
    this.widget.serialize = false;
    // The plain text widget stays the stored value; the editor replaces it on screen.
    this.prompts.hidden = true;
    if (this.prompts.options) this.prompts.options.hidden = true;
  }

  dispose() {
    this.resizeObserver.disconnect();
    this.player.replaceChildren(); // stops a playing clip
  }

  /** The editor's list as the node stores it (the widget's text). */
  list() {
    return parsePrompts(this.prompts.value);
  }

  /** Applies `change` to the prompt list, writes it to the widget and keeps num_clips in step when it was. */
  edit(change, focusIndex) {
    const before = this.list();
    const after = [...before];
    change(after);
    if (after.length === 0) return;
    this.prompts.value = after.join("\n"); // a DOM widget's setter runs its callback
    const clips = widget(this.node, "num_clips");
    const repeat = settingsOf(this.node).promptRepeat;
    const made = (lines) => lineClips(lines, repeat).reduce((a, b) => a + b, 0);
    if (clips && made(after) !== made(before) && Number(clips.value) === made(before)) setWidget(this.node, "num_clips", made(after));
    graphChanged(this.node);
    this.render();
    const index = typeof focusIndex === "function" ? focusIndex(after) : focusIndex;
    const input = index === undefined ? null : this.rows.querySelectorAll("textarea")[index];
    if (input) { // a new clip starts as a copy of its neighbour, selected, so typing replaces it
      input.focus();
      input.select();
    }
  }

  /** Writes one row's prompt (or, with `settings`, its settings) while it is typed in, without redrawing the rows (the
   * caret stays). */
  type(index, text, { settings = false } = {}) {
    const list = this.list();
    const line = parseLine(list[index] ?? "");
    if (!settings && text.trim() === "") return; // a row being retyped: the stored list keeps the old text until there is some
    const flat = text.replace(/\s*\n\s*/g, " ").trim();
    // "|" starts the settings, so one typed in the prompt box is kept as "/" (the settings box is where settings go)
    list[index] = settings ? joinLine(line.prompt, flat.replace(/^\|\s*/, "")) : joinLine(flat.replaceAll("|", "/"), line.settingsText);
    this.prompts.value = list.join("\n");
    this.signature = this.currentSignature();
    graphChanged(this.node, { typed: true });
    this.showError(index);
  }

  showError(index) {
    const row = this.rows.querySelector(`.svi-row[data-clip="${index}"]`);
    const note = row?.querySelector(".svi-row-error");
    if (!note) return;
    const { error } = parseLine(this.list()[index] ?? "");
    note.textContent = error ? `line ${index + 1}: ${error}` : "";
    note.hidden = !error;
  }

  currentSignature() {
    const s = settingsOf(this.node);
    return [this.prompts.value, s.length, s.fps, s.mode, s.motion, s.conditioningFrames, s.numClips, s.overflow,
      s.promptRepeat, promptsLinked(this.node)].join("\u0000");
  }

  /** Redraws when the stored value or the clip settings changed by any other way (undo, paste, a widget, a script). */
  sync() {
    if (this.root.contains(document.activeElement) && document.activeElement?.tagName === "TEXTAREA") return;
    if (this.currentSignature() !== this.signature) this.render();
  }

  render() {
    this.signature = this.currentSignature();
    const settings = settingsOf(this.node);
    const list = this.list();
    const linked = promptsLinked(this.node);
    const total = clipRange(settings.numClips - 1, settings)[1];

    this.head.replaceChildren(
      element("span", "svi-title", "Clip prompts"),
      element("span", "svi-summary", `${settings.numClips} clip${settings.numClips === 1 ? "" : "s"} · ${formatSeconds(total)}`),
    );
    this.add.hidden = linked;
    if (linked) {
      this.rows.replaceChildren(element("div", "svi-note", "The prompts come from the linked input; connect nothing to edit them here."));
      this.footer.replaceChildren();
      this.fit();
      return;
    }

    const spans = lineSpans(list, settings);
    const planned = lineClips(list, settings.promptRepeat).reduce((a, b) => a + b, 0);
    this.rows.replaceChildren(...list.map((text, index) => {
      const span = spans[index];
      const line = parseLine(text);
      const row = element("div", `svi-row${span ? "" : " unused"}`);
      row.dataset.clip = String(index);
      const head = element("div", "svi-row-head");
      const label = !span ? `Line ${index + 1}` : span[0] === span[1] ? `Clip ${span[0] + 1}` : `Clips ${span[0] + 1}–${span[1] + 1}`;
      const range = span ? formatRange([clipRange(span[0], settings)[0], clipRange(span[1], settings)[1]])
        : `not made (num_clips is ${settings.numClips})`;
      head.append(
        element("span", "svi-clip-no", label),
        element("span", "svi-range", range),
        iconButton("up", "Move up", () => this.edit((l) => l.splice(index - 1, 2, l[index], l[index - 1])), index === 0),
        iconButton("down", "Move down", () => this.edit((l) => l.splice(index, 2, l[index + 1], l[index])),
          index === list.length - 1),
        iconButton("duplicate", "Duplicate", () => this.edit((l) => l.splice(index + 1, 0, l[index]))),
        iconButton("remove", "Remove", () => this.edit((l) => l.splice(index, 1)), list.length === 1),
      );
      const input = element("textarea");
      input.rows = 1;
      input.value = line.prompt;
      input.spellcheck = false;
      input.placeholder = "what happens in this clip";
      input.setAttribute("aria-label", `Clip ${index + 1} prompt`);
      input.addEventListener("input", () => {
        if (input.value.includes("\n")) { // Enter or a pasted list: one clip per line, the caret on the next new one
          const lines = input.value.split(/\r?\n/);
          const extra = parsePrompts(lines.slice(1).join("\n"));
          const first = joinLine(lines[0].trim() || line.prompt, line.settingsText);
          this.edit((l) => l.splice(index, 1, first, ...(extra.length ? extra : [first])), index + Math.max(1, extra.length));
          return;
        }
        this.type(index, input.value);
        this.grow(input);
      });
      input.addEventListener("change", () => { // leaving a cleared row shows its stored text again
        if (input.value.trim() === "") {
          input.value = parseLine(this.list()[index] ?? "").prompt;
          this.grow(input);
        }
      });
      const options = element("input", "svi-settings");
      options.type = "text";
      options.value = line.settingsText;
      options.spellcheck = false;
      options.placeholder = "settings: repeat=2 style=0.6 seed=1 end=image.png drift=off";
      options.setAttribute("aria-label", `Clip ${index + 1} settings`);
      options.addEventListener("input", () => this.type(index, options.value, { settings: true }));
      const chips = element("div", "svi-chips");
      for (const [name, setting] of Object.entries(line.settings)) chips.append(element("span", "svi-chip", `${name} ${setting}`));
      const error = element("div", "svi-row-error");
      row.append(head, input, options, chips, error);
      return row;
    }));
    list.forEach((_, index) => this.showError(index));
    requestAnimationFrame(() => this.growAll());

    this.footer.replaceChildren();
    if (settings.numClips !== planned) {
      if (settings.numClips > planned) {
        const rule = settings.overflow.startsWith("repeat") ? "repeat the last prompt" : "cycle through the prompts";
        const from = formatSeconds(clipRange(planned, settings)[0]);
        this.footer.append(`Clips ${planned + 1}–${settings.numClips} (from ${from}) ${rule}.`);
      } else {
        this.footer.append(`Only the first ${settings.numClips} of the ${planned} clips the lines make are made.`);
      }
      const match = element("button", "svi-button", `Make ${planned} clip${planned === 1 ? "" : "s"}`);
      match.type = "button";
      match.addEventListener("click", () => {
        setWidget(this.node, "num_clips", planned);
        graphChanged(this.node);
        this.render();
      });
      this.footer.append(match);
    }
    this.renderTimeline();
  }

  grow(textarea) {
    if (!textarea.isConnected || textarea.offsetWidth === 0) return; // not laid out yet: the resize observer comes back
    textarea.style.height = "auto";
    textarea.style.height = `${textarea.scrollHeight + 2}px`;
  }

  growAll() {
    for (const input of this.rows.querySelectorAll("textarea")) this.grow(input);
    this.fit();
  }

  // -------------------------------------------------------------- the timeline

  onClipEvent(detail) {
    // Only the client that queued a prompt gets its clip events; each carries the prompt id, so a new run's first event
    // clears the last run's timeline even when this page missed its execution_start.
    if (this.resetOnNextEvent || (detail.prompt_id && detail.prompt_id !== this.promptId)) {
      this.clips = [];
      this.resetOnNextEvent = false;
      this.promptId = detail.prompt_id;
      this.closePlayer();
    }
    this.clips.length = Number(detail.clips) || 0;
    for (let k = 0; k < this.clips.length; k++) this.clips[k] ??= { status: "pending", clip: k };
    // Each message is the whole state of its clip (a 'done' carries its files), so it replaces the last one.
    this.clips[detail.clip] = { ...detail, received: Date.now() };
    this.renderTimeline();
  }

  onRunStopped(reason) {
    let changed = false;
    for (const clip of this.clips) {
      if (clip?.status === "running") {
        clip.status = "failed";
        clip.error = reason;
        changed = true;
      }
    }
    if (changed) this.renderTimeline();
  }

  renderTimeline() {
    if (!this.clips.length) {
      this.timeline.replaceChildren();
      this.cells = [];
      this.fit();
      return;
    }
    const settings = settingsOf(this.node);
    const done = this.clips.filter((c) => c.status === "done").length;
    const running = this.clips.find((c) => c.status === "running");
    const failed = this.clips.filter((c) => c.status === "failed");
    let summary = `${done}/${this.clips.length} done`;
    if (running) summary += ` · clip ${running.clip + 1} step ${running.step ?? 0}/${running.steps ?? "?"}`;
    if (failed.length) summary += ` · ${failed.length} failed`;
    const head = element("div", "svi-head");
    head.append(element("span", "svi-title", "Clip timeline"), element("span", "svi-summary", summary));

    // A cell whose clip did not change is kept as it is: its thumbnail does not reload and a click on it is not lost.
    this.cells ??= [];
    this.cells.length = this.clips.length;
    const grid = element("div", "svi-cells");
    grid.append(...this.clips.map((clip, index) => {
      const range = formatRange(clipRange(index, settings));
      const key = [clip.status, clip.step, clip.steps, clip.thumbnail, clip.received && clip.status === "done" ? clip.received : "",
        clip.error, this.playing === index, range].join("|");
      if (this.cells[index]?.key !== key) this.cells[index] = { key, el: this.cell(clip, index, range) };
      return this.cells[index].el;
    }));
    this.timeline.replaceChildren(head, grid, ...failed.map((c) => element("div", "svi-error", `Clip ${c.clip + 1} failed: ${c.error ?? ""}`)));
    this.fit();
  }

  cell(clip, index, range) {
    const cell = element(clip.status === "done" ? "button" : "div", `svi-cell ${clip.status}`);
    cell.dataset.clip = String(index);
    if (this.playing === index) cell.classList.add("playing");
    const frame = element("div", "svi-frame");
    if (clip.status === "done" && clip.thumbnail) {
      const image = element("img");
      image.src = viewUrl(clip.subfolder, clip.thumbnail, clip.received);
      image.alt = `clip ${index + 1}`;
      image.draggable = false;
      image.addEventListener("load", () => this.fit(), { once: true });
      frame.append(image);
    } else if (clip.status === "running") {
      frame.append(element("div", "svi-spinner"));
    } else {
      frame.append(element("span", "", { failed: "failed", saving: "saving" }[clip.status] ?? "waiting"));
    }
    const progress = clip.status === "running" && clip.steps ? `step ${clip.step ?? 0}/${clip.steps}` : range;
    cell.append(frame, element("div", "svi-caption", `${index + 1} · ${progress}`));
    if (clip.status === "running" && clip.steps) {
      const bar = element("div", "svi-bar");
      bar.style.width = `${(100 * (clip.step ?? 0)) / clip.steps}%`;
      cell.append(bar);
    }
    cell.title = [`Clip ${index + 1} (${range}): ${clip.status}`, clip.prompt, clip.error].filter(Boolean).join("\n");
    if (clip.status === "done") {
      cell.type = "button";
      cell.setAttribute("aria-label", `Play clip ${index + 1}`);
      cell.addEventListener("click", (event) => {
        event.stopPropagation();
        this.play(index);
      });
    }
    return cell;
  }

  play(index) {
    const clip = this.clips[index];
    if (!clip?.preview) return;
    this.playing = index;
    const head = element("div", "svi-player-head");
    const close = iconButton("remove", "Close the player", () => this.closePlayer());
    head.append(element("span", "", `Clip ${index + 1}: ${clip.prompt ?? ""}`), close);
    const video = element("video");
    video.src = viewUrl(clip.subfolder, clip.preview, clip.received);
    video.controls = true;
    video.autoplay = true;
    video.muted = true;
    video.loop = true;
    video.playsInline = true;
    video.addEventListener("loadedmetadata", () => this.fit(), { once: true });
    this.player.replaceChildren(head, video);
    this.renderTimeline();
  }

  closePlayer() {
    this.playing = null;
    this.player.replaceChildren();
    this.renderTimeline();
  }

  // -------------------------------------------------------------- size

  minHeight() {
    const height = this.content.offsetHeight;
    if (height > 0) this.measured = height;
    const margin = this.widget?.margin ?? 10; // the frontend insets a DOM widget's element by its margin on both sides
    return Math.max(80, (this.measured || 60 + 52 * this.list().length) + 2 * margin + 2);
  }

  /** Grows the node so the editor, the timeline and the node's own previews all fit (never shrinks what the user sized). */
  fit() {
    requestAnimationFrame(() => {
      this.grown();
      this.node.setDirtyCanvas?.(true, true);
    });
  }

  grown() {
    const node = this.node;
    const wanted = node.computeSize?.();
    if (!wanted || (wanted[1] <= node.size[1] + 0.5 && wanted[0] <= node.size[0] + 0.5)) return false;
    node.setSize([Math.max(node.size[0], wanted[0]), Math.max(node.size[1], wanted[1])]);
    return true;
  }
}

function attach(node) {
  if (node.sviClipEditor || !widget(node, "prompts")) return node.sviClipEditor;
  try {
    node.sviClipEditor = new ClipEditor(node);
    node.sviClipEditor.render();
  } catch (error) { // a frontend this was not written for: the node keeps its plain prompts box
    console.error("[svi-infinity] the clip editor could not be added; the plain prompts box stays", error);
    const prompts = widget(node, "prompts");
    prompts.hidden = false;
    if (prompts.options) prompts.options.hidden = false;
  }
  return node.sviClipEditor;
}

/** The node an execution id names ("12", or "5:12" inside a subgraph). */
function nodeForExecutionId(id) {
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById?.(Number(part)) ?? graph?.getNodeById?.(part);
    graph = node?.subgraph;
  }
  return node;
}

function allEditors() {
  const editors = [];
  const visit = (graph) => {
    for (const node of graph?._nodes ?? graph?.nodes ?? []) {
      if (node.sviClipEditor) editors.push(node.sviClipEditor);
      if (node.subgraph) visit(node.subgraph);
    }
  };
  visit(app.rootGraph ?? app.graph);
  return editors;
}

function loadStyles() {
  if (document.querySelector("link[data-svi-infinity]")) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = new URL("./svi_infinity.css", import.meta.url).href;
  link.dataset.sviInfinity = "";
  document.head.append(link);
}

// ComfyUI may list this file twice (once for WEB_DIRECTORY, once for pyproject's [tool.comfy] web when the folder is
// not named like the project): the first copy registers, the second does nothing.
if (!window.__sviInfinityCanvas) {
  window.__sviInfinityCanvas = true;
  app.registerExtension({
    name: EXTENSION,
    setup() {
      loadStyles();
      api.addEventListener(CLIP_EVENT, ({ detail }) => {
        const node = nodeForExecutionId(detail.node);
        const editor = node && (node.sviClipEditor ?? attach(node));
        editor?.onClipEvent(detail);
      });
      api.addEventListener("execution_start", () => {
        for (const editor of allEditors()) editor.resetOnNextEvent = true;
      });
      api.addEventListener("execution_interrupted", () => {
        for (const editor of allEditors()) editor.onRunStopped("stopped");
      });
      api.addEventListener("execution_error", ({ detail }) => {
        for (const editor of allEditors()) editor.onRunStopped(detail?.exception_message ?? "error");
      });
    },
    async beforeRegisterNodeDef(nodeType, nodeData) {
      const chain = (method, after) => {
        const original = nodeType.prototype[method];
        nodeType.prototype[method] = function (...args) {
          const result = original?.apply(this, args);
          after.call(this, ...args);
          return result;
        };
      };
      if (MODE_NODES.has(nodeData.name)) {
        chain("onConfigure", function () { // a workflow saved with an older mode name loads with its current name
          const mode = widget(this, "mode");
          if (mode && LEGACY_MODES[mode.value]) mode.value = LEGACY_MODES[mode.value];
        });
      }
      if (nodeData.name !== NODE_TYPE) return;
      chain("onNodeCreated", function () {
        attach(this);
        this.setSize([Math.max(this.size[0], 420), this.size[1]]);
      });
      chain("onConfigure", function () {
        attach(this)?.render();
      });
      chain("onConnectionsChange", function () {
        this.sviClipEditor?.sync();
      });
      chain("onRemoved", function () {
        this.sviClipEditor?.dispose();
      });
      chain("onExecuted", function () {
        this.sviClipEditor?.fit(); // the node's own video preview appears under the editor
      });
      chain("onDrawForeground", function () {
        // The frontend adds its own previews (the finished-clip image, the video) without growing the node.
        if (this.sviClipEditor?.grown()) this.setDirtyCanvas?.(true, true);
        this.sviClipEditor?.sync();
      });
    },
  });
}
