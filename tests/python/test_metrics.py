"""pc.metrics outside the daemon (a policy's unit test): counters, gauges and
histograms with and without labels, in the exposition the daemon serves;
what may not be declared or counted is refused with a clear error."""

from __future__ import annotations

import re

import pytest

import portcullis as pc


def test_a_counter_by_label_and_without():
    hits = pc.metrics.counter("t_hits_total", "Hits", labels=["list"])
    hits.labels(list="zen").inc()
    hits.labels("zen").inc(2)
    hits.labels(list="dbl").inc()
    assert hits.labels(list="zen").value == 3
    plain = pc.metrics.counter("t_plain_total", "Plain")
    plain.inc()
    assert plain.value == 1
    text = pc.metrics.exposition()
    assert '# TYPE t_hits_total counter' in text
    assert 't_hits_total{list="zen"} 3' in text
    assert 't_hits_total{list="dbl"} 1' in text
    # The daemon's own families are there too.
    assert "# TYPE portcullis_transactions_total counter" in text


def test_declaring_again_finds_the_same_metric():
    a = pc.metrics.counter("t_again_total", "Again", labels=["x"])
    a.labels(x="1").inc()
    b = pc.metrics.counter("t_again_total", "Again", labels=["x"])  # a reload, another worker
    b.labels(x="1").inc()
    assert a.labels(x="1").value == 2
    with pytest.raises(ValueError, match="declared before with another type, labels or buckets"):
        pc.metrics.counter("t_again_total", "Again", labels=["y"])
    with pytest.raises(ValueError, match="declared before"):
        pc.metrics.gauge("t_again_total", "Again", labels=["x"])


def test_a_gauge_goes_both_ways():
    g = pc.metrics.gauge("t_queue", "Queue")
    g.set(5)
    g.inc()
    g.dec(2)
    assert g.value == 4


def test_a_histogram_refuses_nan_and_keeps_its_figures():
    h = pc.metrics.histogram("t_ratio", "Ratio", buckets=[0.1, 1])
    h.observe(0.5)
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match="finite"):
            h.observe(float(bad))
    text = pc.metrics.exposition()
    assert 't_ratio_bucket{le="0.1"} 0' in text
    assert "t_ratio_sum 0.5" in text


def test_a_histogram_counts_in_its_buckets():
    h = pc.metrics.histogram("t_lookup_seconds", "Lookups", buckets=[0.1, 1])
    for v in (0.05, 0.5, 5):
        h.observe(v)
    with h.time():
        pass
    text = pc.metrics.exposition()
    assert 't_lookup_seconds_bucket{le="0.1"} 2' in text
    assert 't_lookup_seconds_bucket{le="1"} 3' in text
    assert 't_lookup_seconds_bucket{le="+Inf"} 4' in text
    assert re.search(r"t_lookup_seconds_count 4\n", text)
    labelled = pc.metrics.histogram("t_by_zone_seconds", "By zone", labels=["zone"], buckets=[1])
    with labelled.labels(zone="a").time():
        pass
    assert 't_by_zone_seconds_count{zone="a"} 1' in pc.metrics.exposition()


@pytest.mark.parametrize("make,error", [
    (lambda: pc.metrics.counter("portcullis_mine_total", ""), "the daemon's"),
    (lambda: pc.metrics.counter("bad name", ""), "not a Prometheus metric name"),
    (lambda: pc.metrics.counter("t_l_total", "", labels=["bad-label"]), "not a label name"),
    (lambda: pc.metrics.histogram("t_h", "", buckets=[2, 1]), "finite and increasing"),
    (lambda: pc.metrics.histogram("t_h2", "", buckets=list(range(1, 30))), "1 to 16 buckets"),
    (lambda: pc.metrics.histogram("t_h3", "", labels=["le"]), "not a label name"),
])
def test_bad_declarations_are_refused(make, error):
    with pytest.raises(ValueError, match=error):
        make()


def test_misuse_is_refused():
    c = pc.metrics.counter("t_misuse_total", "", labels=["a"])
    with pytest.raises(ValueError, match="has labels"):
        c.inc()
    with pytest.raises(ValueError, match="want the labels a"):
        c.labels(b="1")
    with pytest.raises(ValueError, match="only goes up"):
        c.labels(a="1").inc(-1)
    with pytest.raises(TypeError, match="is a counter"):
        c.labels(a="1").observe(1)
    h = pc.metrics.histogram("t_misuse_seconds", "")
    with pytest.raises(TypeError, match="is a histogram"):
        h.labels().inc()
    assert not hasattr(h, "inc")


def test_a_hooks_none_observer_counts_as_observed_does_and_keeps_its_figures_alive():
    import gc

    import _portcullis_core as core

    observe = core.HookMetrics("/t/none_observer.py", "rcpt").none_observer
    gc.collect()  # the HookMetrics object is gone: the function holds the figures
    observe(0.002)
    observe(1)  # an int is a number of seconds too
    with pytest.raises(TypeError):
        observe("soon")
    text = pc.metrics.exposition()
    assert re.search(r'portcullis_verdicts_total\{hook="on_rcpt",verdict="none"\} (\d+)', text)
    assert 'portcullis_hook_duration_seconds_count{policy="/t/none_observer.py",hook="on_rcpt"} 2' in text


@pytest.mark.parametrize("first, second", [
    (("histogram", "clash_a_seconds"), ("gauge", "clash_a_seconds_count")),
    (("gauge", "clash_b_seconds_bucket"), ("histogram", "clash_b_seconds")),  # either order
    (("counter", "clash_c_sum"), ("histogram", "clash_c")),
    (("counter", "clash_d"), ("counter", "clash_d_total")),
    (("gauge", "clash_e_total"), ("counter", "clash_e")),
])
def test_a_family_whose_samples_would_be_anothers_is_refused(first, second):
    # Two families with a sample of the same name (a histogram req_seconds and a gauge
    # req_seconds_count) made an exposition with that sample twice, under two TYPE lines.
    getattr(pc.metrics, first[0])(first[1], "first")
    with pytest.raises(ValueError, match=f"metric name '{second[1]}': its sample .* would be one of the {first[0]} "
                                         f"'{first[1]}'"):
        getattr(pc.metrics, second[0])(second[1], "second")
    assert f"# TYPE {second[1]} " not in pc.metrics.exposition()
    getattr(pc.metrics, first[0])(first[1], "first")  # declared again: still the same metric


def test_a_label_value_with_a_lone_surrogate_is_counted_with_a_question_mark():
    odd = pc.metrics.counter("odd_label_total", "odd", labels=["v"])
    odd.labels(v="x\udcff").inc()  # a header's undecodable byte, as surrogateescape gives it
    odd.labels("x\udcff").inc()
    assert odd.labels(v="x?").value == 2
    assert 'odd_label_total{v="x?"} 2' in pc.metrics.exposition()
