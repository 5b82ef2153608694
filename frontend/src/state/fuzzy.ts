// Quick open's matching: the query's characters in order (case-insensitive),
// ranked by how tight and how late (file name over directory) they match.

export function fuzzyScore(query: string, path: string): number | null {
  if (!query) return 0;
  const q = query.toLowerCase();
  const p = path.toLowerCase();
  const nameStart = p.lastIndexOf("/") + 1;
  let score = 0;
  let last = -1;
  for (const ch of q) {
    const i = p.indexOf(ch, last + 1);
    if (i < 0) return null;
    score += i === last + 1 ? 3 : 1; // consecutive characters
    if (i >= nameStart) score += 2; // in the file name
    if (i === nameStart || p[i - 1] === "/" || p[i - 1] === "." || p[i - 1] === "-" || p[i - 1] === "_") score += 2; // word start
    last = i;
  }
  return score - p.length / 100;
}

export function fuzzyRank(query: string, paths: string[]): string[] {
  const scored: [number, string][] = [];
  for (const p of paths) {
    const s = fuzzyScore(query, p);
    if (s !== null) scored.push([s, p]);
  }
  scored.sort((a, b) => b[0] - a[0] || (a[1] < b[1] ? -1 : 1));
  return scored.map((x) => x[1]);
}
