// A binary min-heap of numbers (agent ranks) under a caller's order. The
// scheduler uses it with lazy deletion: stale entries are skipped on peek.

/** A min-heap of numbers ordered by `less`. */
export class MinHeap {
  private readonly items: number[];

  /** `sorted` must already be in `less` order (it is then a valid heap). */
  constructor(private readonly less: (a: number, b: number) => boolean, sorted: number[] = []) {
    this.items = sorted;
  }

  get size(): number {
    return this.items.length;
  }

  /** The smallest item, or undefined when empty. */
  peek(): number | undefined {
    return this.items[0];
  }

  push(x: number): void {
    const a = this.items;
    let i = a.push(x) - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(a[i], a[p])) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }

  /** Removes and returns the smallest item. */
  pop(): number | undefined {
    const a = this.items;
    if (a.length === 0) return undefined;
    const top = a[0];
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.less(a[l], a[m])) m = l;
        if (r < a.length && this.less(a[r], a[m])) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}
