/**
 * The one request helper: every call to the carme server extension goes
 * through `requestAPI` (REST) or `streamURL` (the WebSocket), both under
 * `<base_url>/carme/api/` and authenticated like the rest of JupyterLab.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

const API = ['carme', 'api'];

/** An error answer of the server extension: HTTP status and its message. */
export class RequestError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'RequestError';
  }
}

/**
 * Call `/carme/api/<endPoint>` and return the parsed JSON body.
 *
 * Throws `RequestError` with the server's message when the answer is not 2xx,
 * and with status 0 when the server cannot be reached.
 */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, ...API, endPoint);
  const headers = new Headers(init.headers);
  if (init.body !== undefined && !headers.has('Content-Type')) {
    headers.set('Content-Type', 'application/json');
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, { ...init, headers }, settings);
  } catch (error) {
    throw new RequestError(0, `The Jupyter server did not answer (${String(error)}).`);
  }
  const text = await response.text();
  let data: unknown = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const message =
      typeof data === 'object' && data !== null && 'message' in data
        ? String((data as { message: unknown }).message)
        : `${response.status} ${response.statusText}`;
    throw new RequestError(response.status, message);
  }
  return data as T;
}

/** The WebSocket URL of the live stream, with the token when the page has one. */
export function streamURL(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): string {
  let url = URLExt.join(settings.wsUrl, ...API, 'stream');
  if (settings.appendToken && settings.token !== '') {
    url += `?token=${encodeURIComponent(settings.token)}`;
  }
  return url;
}

/** Open the stream with the settings' WebSocket class. */
export function openStream(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): WebSocket {
  return new settings.WebSocket(streamURL(settings));
}
