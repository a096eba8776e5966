// SVI Infinity canvas extension: a per-clip prompt editor and a live clip timeline on the SVI Long Video node.
//
// The editor only rewrites the node's own "prompts" widget (one prompt per line), so saved workflows in UI and
// API format keep the prompts, and a workflow saved without this extension still runs. The timeline is fed by the
// pack's own "svi-infinity.clip" server messages; nothing polls.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "SVILongVideo";
const CLIP_EVENT = "svi-infinity.clip";
const MOTION_FRAMES = { "4 frames (1 latent frame)": 1, "8 frames (2 latent frames)": 2, "12 frames (3 latent frames)": 3 };

const STYLE = `
.svi-editor { display: flex; flex-direction: column; gap: 4px; font: 12px sans-serif; color: var(--input-text, #ddd); width: 100%; }
.svi-prompt-row { display: grid; grid-template-columns: 92px 1fr auto; gap: 4px; align-items: start; }
.svi-prompt-row .svi-range { opacity: 0.75; padding-top: 4px; white-space: nowrap; }
.svi-prompt-row textarea { min-height: 34px; resize: vertical; background: var(--comfy-input-bg, #222); color: inherit;
  border: 1px solid var(--border-color, #444); border-radius: 4px; font: inherit; }
.svi-prompt-row .svi-buttons button, .svi-add { background: var(--comfy-input-bg, #333); color: inherit;
  border: 1px solid var(--border-color, #555); border-radius: 4px; cursor: pointer; padding: 0 5px; margin: 0 1px; }
.svi-timeline { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 6px; }
.svi-clip { width: 84px; border-radius: 4px; border: 2px solid #555; font-size: 10px; text-align: center; overflow: hidden; }
.svi-clip.pending { border-color: #555; opacity: 0.6; }
.svi-clip.running { border-color: #d9a400; }
.svi-clip.done { border-color: #2e9e4f; }
.svi-clip.failed { border-color: #c0392b; }
.svi-clip img { width: 100%; display: block; cursor: pointer; }
.svi-clip .svi-bar { height: 3px; background: #d9a400; }
.svi-player video { width: 100%; margin-top: 4px; }
`;

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function promptsOf(node) {
  return String(widget(node, "prompts")?.value ?? "").split("\n").filter((line) => line.trim() !== "");
}

/** Seconds each clip adds, from the node's own length, motion, mode and fps widgets (the seam accounting). */
function clipRanges(node, count) {
  const length = Number(widget(node, "length")?.value ?? 81);
  const fps = Number(widget(node, "fps")?.value ?? 16);
  const pro = String(widget(node, "mode")?.value ?? "").startsWith("2.0");
  const overlap = pro ? 1 + 4 * (MOTION_FRAMES[widget(node, "motion")?.value] ?? 1)
                      : Number(widget(node, "conditioning_frames")?.value ?? 5);
  const step = length - overlap;
  const ranges = [];
  for (let k = 0; k < count; k++) {
    const start = k === 0 ? 0 : length + (k - 1) * step;
    const end = k === 0 ? length : start + step;
    ranges.push(`${(start / fps).toFixed(1)}–${(end / fps).toFixed(1)} s`);
  }
  return ranges;
}

function viewUrl(subfolder, filename) {
  const query = new URLSearchParams({ filename, subfolder, type: "output" });
  return api.apiURL(`/view?${query}`);
}

function attachEditor(node) {
  const promptsWidget = widget(node, "prompts");
  if (!promptsWidget || node.sviEditor) return;
  const root = document.createElement("div");
  root.className = "svi-editor";
  const rows = document.createElement("div");
  const add = document.createElement("button");
  add.className = "svi-add";
  add.textContent = "+ Add clip";
  const timeline = document.createElement("div");
  timeline.className = "svi-timeline";
  const player = document.createElement("div");
  player.className = "svi-player";
  root.append(rows, add, timeline, player);

  const write = (prompts, resizeClips) => {
    const text = prompts.join("\n");
    if (promptsWidget.element) {
      // A multiline STRING widget keeps its value in its textarea: write there, as typing would.
      promptsWidget.element.value = text;
      promptsWidget.element.dispatchEvent(new Event("input", { bubbles: true }));
    }
    promptsWidget.value = text;
    promptsWidget.callback?.(text);
    if (resizeClips) {
      const clips = widget(node, "num_clips");
      if (clips) clips.value = Math.max(1, prompts.length);
    }
    node.setDirtyCanvas?.(true, true);
    render();
  };

  const render = () => {
    const prompts = promptsOf(node);
    const ranges = clipRanges(node, prompts.length);
    rows.replaceChildren(...prompts.map((text, index) => {
      const row = document.createElement("div");
      row.className = "svi-prompt-row";
      const range = document.createElement("div");
      range.className = "svi-range";
      range.textContent = `Clip ${index + 1} · ${ranges[index]}`;
      const input = document.createElement("textarea");
      input.value = text;
      input.dataset.clip = String(index);
      input.addEventListener("change", () => {
        const next = promptsOf(node);
        next[index] = input.value.replace(/\n/g, " ").trim() || next[index];
        write(next, false);
      });
      const buttons = document.createElement("div");
      buttons.className = "svi-buttons";
      const actions = {
        "↑": (list) => index > 0 && list.splice(index - 1, 2, list[index], list[index - 1]),
        "↓": (list) => index < list.length - 1 && list.splice(index, 2, list[index + 1], list[index]),
        "⧉": (list) => list.splice(index + 1, 0, list[index]),
        "✕": (list) => list.length > 1 && list.splice(index, 1),
      };
      const titles = { "↑": "Move up", "↓": "Move down", "⧉": "Duplicate", "✕": "Remove" };
      for (const [label, action] of Object.entries(actions)) {
        const button = document.createElement("button");
        button.textContent = label;
        button.title = titles[label];
        button.addEventListener("click", () => {
          const list = promptsOf(node);
          action(list);
          write(list, label === "⧉" || label === "✕");
        });
        buttons.append(button);
      }
      row.append(range, input, buttons);
      return row;
    }));
  };

  add.addEventListener("click", () => {
    const list = promptsOf(node);
    list.push(list[list.length - 1] ?? "a new shot");
    write(list, true);
  });

  node.sviEditor = { render, timeline, player, clips: [] };
  if (promptsWidget.element) promptsWidget.element.style.display = "none";
  promptsWidget.computeSize = () => [0, -4];
  node.addDOMWidget("svi_prompt_editor", "svi-editor", root, { serialize: false, getMinHeight: () => 140 });
  render();
}

function renderTimeline(node) {
  const state = node.sviEditor;
  state.timeline.replaceChildren(...state.clips.map((clip, index) => {
    const cell = document.createElement("div");
    cell.className = `svi-clip ${clip.status}`;
    cell.dataset.clip = String(index);
    if (clip.thumbnail) {
      const image = document.createElement("img");
      image.src = viewUrl(clip.subfolder, clip.thumbnail);
      image.alt = `clip ${index + 1}`;
      image.addEventListener("click", () => {
        const video = document.createElement("video");
        video.src = viewUrl(clip.subfolder, clip.preview);
        video.controls = true;
        video.autoplay = true;
        video.muted = true;
        state.player.replaceChildren(video);
      });
      cell.append(image);
    }
    const label = document.createElement("div");
    const progress = clip.status === "running" && clip.steps ? ` ${clip.step}/${clip.steps}` : "";
    label.textContent = `${index + 1}: ${clip.status}${progress}`;
    cell.append(label);
    if (clip.status === "running" && clip.steps) {
      const bar = document.createElement("div");
      bar.className = "svi-bar";
      bar.style.width = `${(100 * clip.step) / clip.steps}%`;
      cell.append(bar);
    }
    if (clip.error) cell.title = clip.error;
    return cell;
  }));
}

app.registerExtension({
  name: "svi-infinity.canvas",
  setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);
    api.addEventListener(CLIP_EVENT, ({ detail }) => {
      const node = app.graph?.getNodeById?.(Number(detail.node)) ?? app.graph?.getNodeById?.(detail.node);
      if (!node?.sviEditor) return;
      const clips = node.sviEditor.clips;
      clips.length = detail.clips;
      for (let k = 0; k < detail.clips; k++) clips[k] ??= { status: "pending" };
      clips[detail.clip] = { ...clips[detail.clip], ...detail };
      renderTimeline(node);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_ID) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      attachEditor(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      attachEditor(this);
      this.sviEditor?.render();
      return result;
    };
  },
});
