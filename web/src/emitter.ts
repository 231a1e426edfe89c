export type Listener<T> = (value: T) => void;

/** A tiny typed event emitter; a throwing listener never stops the others. */
export class Emitter<Events extends object> {
  private listeners = new Map<keyof Events, Set<Listener<never>>>();

  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
    return () => {
      set!.delete(listener as Listener<never>);
    };
  }

  emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const l of Array.from(set)) {
      try {
        (l as Listener<Events[K]>)(value);
      } catch (err) {
        reportError(err);
      }
    }
  }

  count<K extends keyof Events>(event: K): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  clear(): void {
    this.listeners.clear();
  }
}

export function reportError(err: unknown): void {
  // Surface the app's own bug without breaking delivery to other listeners.
  setTimeout(() => {
    throw err;
  }, 0);
}
