// Mask deltas of the interactive session API: {offset, shape, dtype: "uint8", order: "C (i, j, k)", codec, data}.
// `data` is base64 of the changed box's label values, compressed by `codec`. Only "zlib" exists today; an
// unknown codec is an error (never guessed), so a newer server fails loudly instead of corrupting the mask.

export const CODECS = ["zlib"];

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The box's values as a Uint8Array in C order over (i, j, k): k varies fastest. */
export async function decodeDelta(delta) {
  if (!CODECS.includes(delta.codec)) {
    throw new Error(`unknown delta codec '${delta.codec}' (this viewer decodes ${CODECS.join(", ")}): update the viewer`);
  }
  if ((delta.dtype ?? "uint8") !== "uint8") throw new Error(`unsupported delta dtype '${delta.dtype}'`);
  if (delta.order && !delta.order.startsWith("C")) throw new Error(`unsupported delta order '${delta.order}'`);
  // zlib is the "deflate" format of the Compression Streams API ("deflate-raw" would be headerless).
  const stream = new Blob([base64Bytes(delta.data)]).stream().pipeThrough(new DecompressionStream("deflate"));
  const values = new Uint8Array(await new Response(stream).arrayBuffer());
  const [sx, sy, sz] = delta.shape;
  if (values.length !== sx * sy * sz) {
    throw new Error(`delta holds ${values.length} voxels, shape ${delta.shape} needs ${sx * sy * sz}`);
  }
  return values;
}

/**
 * Write a decoded box into `img`, a volume stored the NIfTI way (i fastest: index i + j*nx + k*nx*ny),
 * which is how NiiVue keeps `volume.img`. Returns the number of voxels whose value changed.
 */
export function applyDelta(img, dims, delta, values) {
  const [nx, ny, nz] = dims;
  const [ox, oy, oz] = delta.offset;
  const [sx, sy, sz] = delta.shape;
  if (ox < 0 || oy < 0 || oz < 0 || ox + sx > nx || oy + sy > ny || oz + sz > nz) {
    throw new Error(`delta box ${delta.offset}+${delta.shape} lies outside the volume ${dims}`);
  }
  const plane = nx * ny;
  let n = 0;
  let changed = 0;
  for (let a = 0; a < sx; a++) {
    for (let b = 0; b < sy; b++) {
      let at = ox + a + (oy + b) * nx + oz * plane;
      for (let c = 0; c < sz; c++, at += plane) {
        const value = values[n++];
        if (img[at] !== value) {
          img[at] = value;
          changed++;
        }
      }
    }
  }
  return changed;
}
