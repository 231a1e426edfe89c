/** Channel-name rules from SPEC section 3 (checked client-side so one bad name cannot fail a whole connection). */
const TYPE_RE = /^[a-z][a-z0-9_-]{0,31}$/;
const SEGMENT_RE = /^[A-Za-z0-9_.@-]{1,128}$/;

/** Returns null when `name` is a valid concrete channel name, else the reason it is not. */
export function channelError(name: unknown): string | null {
  if (typeof name !== 'string' || name.length === 0) return 'channel name must be a non-empty string';
  if (utf8Length(name) > 256) return 'channel name longer than 256 bytes';
  const parts = name.split(':');
  if (parts.length > 8) return 'channel name has more than 8 parts';
  if (!TYPE_RE.test(parts[0]!)) return `bad channel type "${parts[0]}"`;
  for (const seg of parts.slice(1)) {
    if (!SEGMENT_RE.test(seg)) return `bad channel segment "${seg}"`;
  }
  return null;
}

export function isValidChannel(name: unknown): name is string {
  return channelError(name) === null;
}

/** Deduplicates and sorts a channel list (stable key for hooks and URLs). */
export function normalizeChannels(channels: string | readonly string[] | null | undefined): string[] {
  if (channels == null) return [];
  const list = typeof channels === 'string' ? [channels] : channels;
  return Array.from(new Set(list.filter((c) => typeof c === 'string' && c.length > 0))).sort();
}

function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}
