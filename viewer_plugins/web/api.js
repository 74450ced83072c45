// A small client for the server's REST API: JSON in and out, bearer token if one is stored, latency measured.

const TOKEN_KEY = "annotation-server.token";

export class ApiError extends Error {
  constructor(status, detail, method, path) {
    super(`${method} ${path}: ${status} ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

export class Api {
  constructor(base) {
    this.base = base; // the server root, e.g. http://host:8000/ (the page lives at <root>/viewer/)
    this.token = localStorage.getItem(TOKEN_KEY) || null;
    this.lastMs = null;
  }

  setToken(token) {
    this.token = token || null;
    if (this.token) localStorage.setItem(TOKEN_KEY, this.token);
    else localStorage.removeItem(TOKEN_KEY);
  }

  url(path, params) {
    const url = new URL(path, this.base);
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, value);
    }
    return url.toString();
  }

  headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra;
  }

  /** -> {data, ms, response}; `as`: "json" (default), "buffer" or "none". Non-2xx throws ApiError. */
  async request(method, path, { params, json, as = "json", keepalive = false } = {}) {
    const init = { method, headers: this.headers(), keepalive };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    const started = performance.now();
    const response = await fetch(this.url(path, params), init);
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
      } catch {
        // not JSON: keep the status text
      }
      throw new ApiError(response.status, detail, method, path);
    }
    let data = null;
    if (as === "json") data = await response.json();
    else if (as === "buffer") data = await response.arrayBuffer();
    const ms = performance.now() - started;
    this.lastMs = ms;
    return { data, ms, response };
  }

  get(path, options) {
    return this.request("GET", path, options);
  }

  post(path, json, options = {}) {
    return this.request("POST", path, { ...options, json });
  }
}

/** The file name of a download (Content-Disposition), which tells NiiVue the format. */
export function downloadName(response) {
  const header = response.headers.get("Content-Disposition") || "";
  const star = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (star) return decodeURIComponent(star[1]);
  const plain = /filename="?([^";]+)"?/i.exec(header);
  return plain ? plain[1] : null;
}
