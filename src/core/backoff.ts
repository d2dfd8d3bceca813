// Exponential backoff with full jitter, so many retriers do not retry in step.
export interface BackoffOptions {
  minMs: number;
  maxMs: number;
}

export function backoffDelay(attempt: number, { minMs, maxMs }: BackoffOptions, random = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(minMs + (ceiling - minMs) * random());
}
