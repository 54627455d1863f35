# Reads `cargo test` output; prints one line per test binary (seconds, which
# binary, what it counted) slowest first, the total time, and one plain
# `N passed, N failed` line over all binaries, for scripts/test.
/^     Running / {
  dep = $NF; sub(/^\(/, "", dep); sub(/\)$/, "", dep); sub(/.*\//, "", dep); sub(/-[0-9a-f]+$/, "", dep)
  bin = ($2 == "unittests") ? dep " (unit, " $3 ")" : $2
  next
}
/^   Doc-tests / { bin = "doc-tests of " $2; next }
/^test result: / {
  t = $0; sub(/.*finished in /, "", t); sub(/s$/, "", t)
  n = $0; sub(/^test result: [a-zA-Z]+\. /, "", n); sub(/; [0-9]+ ignored.*/, "", n)
  p = $0; sub(/^test result: [a-zA-Z]+\. /, "", p); f = p
  sub(/ passed.*/, "", p); sub(/.* passed; /, "", f); sub(/ failed.*/, "", f)
  passed += p; failed += f
  line[++k] = sprintf("%9.1f s  %-52s %s", t, bin, n); secs[k] = t + 0; total += t
}
END {
  for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
    if (secs[j] > secs[i]) { s = secs[i]; secs[i] = secs[j]; secs[j] = s; l = line[i]; line[i] = line[j]; line[j] = l }
  print "test durations, slowest first:"
  for (i = 1; i <= k; i++) print line[i]
  printf "%9.1f s  in %d test binaries\n", total, k
  printf "%d passed, %d failed\n", passed, failed
}
