// Transcribe a 16 kHz mono WAV with a local Whisper folder, offline, through Transformers.js only.
// Usage: node transcribe.mjs MODEL_DIR AUDIO.wav [MAX_NEW_TOKENS]
// Prints one JSON line: {"tokens": [...prompt and generated ids...], "text": "..."}.
import fs from "node:fs";
import path from "node:path";
import { AutoProcessor, WhisperForConditionalGeneration, env } from "@huggingface/transformers";

function readWav(file) {
  // Node has no audio decoder: read the RIFF chunks ourselves (PCM16 or float32, mono, 16 kHz).
  const buf = fs.readFileSync(file);
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE") {
    throw new Error(`${file}: not a RIFF/WAVE file`);
  }
  let format = null;
  for (let pos = 12; pos + 8 <= buf.length; ) {
    const id = buf.toString("ascii", pos, pos + 4);
    const size = buf.readUInt32LE(pos + 4);
    const body = pos + 8;
    if (id === "fmt ") {
      format = {
        code: buf.readUInt16LE(body),
        channels: buf.readUInt16LE(body + 2),
        rate: buf.readUInt32LE(body + 4),
        bits: buf.readUInt16LE(body + 14),
      };
    } else if (id === "data") {
      if (!format || format.channels !== 1 || format.rate !== 16000) {
        throw new Error(`${file}: expected mono 16 kHz audio`);
      }
      const n = size / (format.bits / 8);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        out[i] = format.code === 3 ? buf.readFloatLE(body + 4 * i) : buf.readInt16LE(body + 2 * i) / 32768;
      }
      return out;
    }
    pos = body + size + (size % 2);
  }
  throw new Error(`${file}: no data chunk`);
}

const [modelDir, wavPath, maxNew] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(modelDir));
const id = path.basename(path.resolve(modelDir));

const processor = await AutoProcessor.from_pretrained(id);
const model = await WhisperForConditionalGeneration.from_pretrained(id, { dtype: "fp32", device: "cpu" });
const inputs = await processor(readWav(wavPath));
const options = maxNew ? { max_new_tokens: Number(maxNew) } : {};
const output = await model.generate({ ...inputs, ...options });
const tokens = output.tolist()[0].map(Number);
const text = processor.batch_decode(output, { skip_special_tokens: true })[0];
console.log(JSON.stringify({ tokens, text }));
