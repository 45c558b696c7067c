// Reference outputs of face-api's nets, computed by TF.js itself (cpu backend, float32).
//
// usage: node run.cjs REQUEST.json [MODEL_DIR]  > outputs.json
//
// REQUEST.json: {"images": [{"file": "x0.f32", "height": H, "width": W}, ...],
//                "models": ["landmarks", "expression", "age_gender", "detect"]}
// Each image file holds H*W*3 little-endian float32 RGB values on the [0, 255] scale, row
// major (HWC); relative file names resolve against the request's folder. MODEL_DIR defaults
// to the model/ folder of the installed @vladmandic/face-api package.
//
// For every image and model the raw network output (face-api `runNet`) and the
// post-processed result of face-api's public API are printed as JSON on stdout.
//
// A request may instead name a TF.js graph model (e.g. Human's faceres.json):
//   {"graph": {"model": "/path/model.json", "outputs": ["global_pooling/Mean", ...]},
//    "images": [...]}
// Each image is then the graph's input itself ([1, H, W, 3] float32, already preprocessed);
// the graph is loaded with tf.loadGraphModel from the file path (a small file IOHandler,
// since the pure-JS package has no file:// loader) and `results.graph[i][output]` holds
// the flattened values of each requested output.
'use strict';

const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');
// face-api's CommonJS build for plain Node (no native tfjs-node binary); it uses the
// @tensorflow/tfjs installed beside it, on which we select the pure-JS cpu backend.
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');

function readImage(spec, baseDir) {
  const buf = fs.readFileSync(path.resolve(baseDir, spec.file));
  const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  if (data.length !== spec.height * spec.width * 3) {
    throw new Error(`${spec.file}: ${data.length} floats, expected ${spec.height}x${spec.width}x3`);
  }
  return tf.tensor3d(Array.from(data), [spec.height, spec.width, 3], 'float32');
}

// tf.io.IOHandler reading model.json and its weight shards from disk.
function fileHandler(modelJson) {
  return {
    load: async () => {
      const spec = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
      const dir = path.dirname(modelJson);
      const weightSpecs = [];
      const buffers = [];
      for (const group of spec.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      return {
        modelTopology: spec.modelTopology,
        format: spec.format,
        generatedBy: spec.generatedBy,
        convertedBy: spec.convertedBy,
        signature: spec.signature,
        userDefinedMetadata: spec.userDefinedMetadata,
        weightSpecs,
        weightData,
      };
    },
  };
}

async function runGraph(request, baseDir) {
  await tf.setBackend('cpu');
  await tf.ready();
  const model = await tf.loadGraphModel(fileHandler(path.resolve(baseDir, request.graph.model)));
  const outputs = request.graph.outputs;
  const results = [];
  for (const spec of request.images) {
    const img = readImage(spec, baseDir);
    const x = img.expandDims(0);
    let ys = model.execute(x, outputs);
    if (!Array.isArray(ys)) ys = [ys];
    const row = {};
    outputs.forEach((name, i) => { row[name] = Array.from(ys[i].dataSync()); });
    results.push(row);
    tf.dispose([img, x, ...ys]);
  }
  return { tfjs: tf.version_core, backend: tf.getBackend(), results: { graph: results } };
}

async function main() {
  const [requestPath, modelDirArg] = process.argv.slice(2);
  if (!requestPath) throw new Error('usage: node run.cjs REQUEST.json [MODEL_DIR]');
  const request = JSON.parse(fs.readFileSync(requestPath, 'utf8'));
  const baseDir = path.dirname(path.resolve(requestPath));
  if (request.graph) {
    process.stdout.write(JSON.stringify(await runGraph(request, baseDir)));
    return;
  }
  const modelDir = modelDirArg
    || path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');

  await faceapi.tf.setBackend('cpu');
  await faceapi.tf.ready();
  const models = request.models || ['landmarks', 'expression', 'age_gender'];
  if (models.includes('landmarks')) await faceapi.nets.faceLandmark68Net.loadFromDisk(modelDir);
  if (models.includes('expression')) await faceapi.nets.faceExpressionNet.loadFromDisk(modelDir);
  if (models.includes('age_gender')) await faceapi.nets.ageGenderNet.loadFromDisk(modelDir);
  if (models.includes('detect')) {
    await faceapi.nets.ssdMobilenetv1.loadFromDisk(modelDir);
    await faceapi.nets.faceLandmark68Net.loadFromDisk(modelDir);
  }

  const out = {
    tfjs: faceapi.tf.version_core,
    face_api: faceapi.version,
    backend: faceapi.tf.getBackend(),
    results: {},
  };
  for (const m of models) out.results[m] = [];

  for (const spec of request.images) {
    const img = readImage(spec, baseDir);
    if (models.includes('landmarks')) {
      const net = faceapi.nets.faceLandmark68Net;
      const raw = net.runNet(await faceapi.toNetInput(img));
      const rel = net.forwardInput(await faceapi.toNetInput(img));
      const lm = await net.detectLandmarks(img);
      out.results.landmarks.push({
        raw: Array.from(raw.dataSync()),
        relative: Array.from(rel.dataSync()),
        positions: lm.positions.map((p) => [p.x, p.y]),
      });
      tf.dispose([raw, rel]);
    }
    if (models.includes('expression')) {
      const net = faceapi.nets.faceExpressionNet;
      const logits = net.runNet(await faceapi.toNetInput(img));
      const expr = await net.predictExpressions(img);
      out.results.expression.push({
        logits: Array.from(logits.dataSync()),
        probabilities: faceapi.FACE_EXPRESSION_LABELS.map((k) => expr[k]),
      });
      tf.dispose(logits);
    }
    if (models.includes('age_gender')) {
      const net = faceapi.nets.ageGenderNet;
      const { age, gender } = net.runNet(await faceapi.toNetInput(img));
      const pred = await net.predictAgeAndGender(img);
      out.results.age_gender.push({
        age_raw: Array.from(age.dataSync()),
        gender_logits: Array.from(gender.dataSync()),
        age: pred.age,
        gender: pred.gender,
        gender_probability: pred.genderProbability,
      });
      tf.dispose([age, gender]);
    }
    if (models.includes('detect')) {
      const opts = new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5 });
      const dets = await faceapi.detectAllFaces(img, opts).withFaceLandmarks();
      out.results.detect.push(dets.map((d) => ({
        score: d.detection.score,
        box: [d.detection.box.x, d.detection.box.y, d.detection.box.width, d.detection.box.height],
        landmarks: d.landmarks.positions.map((p) => [p.x, p.y]),
      })));
    }
    img.dispose();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => { console.error(err.stack || String(err)); process.exit(1); });
