export interface UploadOptions {
    mime: string;
    name?: string;
    /** Called after each chunk with the bytes the server has. */
    onProgress?: (sent: number, total: number) => void;
    /** Tries per request before giving up (network errors and 5xx). */
    tries?: number;
}
export interface HttpContext {
    /** e.g. `http://127.0.0.1:7001` */
    base: string;
    token: string;
    fetch: typeof fetch;
}
export declare function sha256Hex(data: BufferSource): Promise<string>;
/** Uploads `data` and returns its media id. Calling it again after a failure resumes where it stopped. */
export declare function uploadMedia(http: HttpContext, data: Blob | ArrayBuffer | Uint8Array, opts: UploadOptions): Promise<string>;
