"""Categories for logged questions (language, then k-means over the cache's embedder) and the recent sample."""

import numpy as np
import pytest

from appliance.distill.drift import MAX_CLUSTERS, categorize, cluster_count, kmeans, language, recent_count
from appliance.distill.records import Record


def test_cluster_counts_grow_with_the_log_but_keep_each_group_measurable():
    assert cluster_count(5) == 1 and cluster_count(19) == 1
    assert cluster_count(40) == 4  # sqrt(20) ~ 4.5 -> 4, each of at least 10
    assert cluster_count(10_000) == MAX_CLUSTERS
    assert all(n // cluster_count(n) >= 10 for n in range(10, 500))


def test_the_recent_sample_is_a_share_of_the_newest_never_what_training_needs():
    assert recent_count(15, 0.1, 100) == 0  # too few to spare any
    assert recent_count(40, 0.1, 100) == 10  # at least a measurable group
    assert recent_count(500, 0.1, 100) == 50
    assert recent_count(5000, 0.1, 100) == 100
    assert recent_count(500, 0.0, 100) == 0


def test_kmeans_finds_separate_directions_and_is_seeded():
    rng = np.random.default_rng(1)
    axes = np.eye(8, dtype=np.float32)[:3]
    points = np.concatenate([a + 0.05 * rng.standard_normal((20, 8)).astype(np.float32) for a in axes])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = kmeans(points, 3, seed=0)
    groups = [set(labels[i * 20:(i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    assert (kmeans(points, 3, seed=0) == labels).all()
    assert (kmeans(points, 1) == 0).all() and (kmeans(points[:2], 5) == 0).all()


def test_language_splits_chinese_from_the_rest():
    assert language("猫可以吃巧克力吗？") == "zh" and language("Can cats eat chocolate?") == "en"
    assert language("What does 知识蒸馏 mean?") == "zh"


@pytest.fixture(scope="module")
def embedder():
    from appliance.cache.embedder import load_embedder

    return load_embedder("use-multilingual-v3")


def test_logged_questions_group_by_what_they_ask_in_each_language(embedder):
    arithmetic = [f"What is {a} plus {b}?" for a, b in zip(range(3, 23), range(40, 60))]
    travel = [f"What are the best things to see in {city}?" for city in
              ["Paris", "Rome", "Tokyo", "Berlin", "Madrid", "Vienna", "Prague", "Lisbon", "Athens", "Dublin",
               "Oslo", "Cairo", "Lima", "Seoul", "Hanoi", "Delhi", "Quito", "Nairobi", "Havana", "Bogota"]]
    chinese = [f"{city}有什么好玩的地方？" for city in ["北京", "上海", "杭州", "成都", "西安", "南京", "苏州", "重庆", "武汉", "厦门",
                                                      "青岛", "大连"]]
    records = [Record(prompt=q, answer="a", category="daemon", source="log") for q in [*arithmetic, *travel, *chinese]]
    out = categorize(records, embedder)
    assert [r.prompt for r in out] == [r.prompt for r in records]  # order and content kept
    cats = [r.category for r in out]
    assert len(set(cats[:20])) == 1 and len(set(cats[20:40])) == 1 and set(cats[:20]) != set(cats[20:40])
    assert cats[0].startswith("en: What is") and "plus" in cats[0]
    assert cats[20].startswith("en: What are the best things to see in")
    assert set(cats[40:]) == {cats[40]} and cats[40].startswith("zh: ")  # 12 questions: one group
    assert all(len(c) <= 44 for c in cats)
    assert categorize(records, embedder) == out  # the same log gives the same categories


def test_the_number_of_groups_is_measured_not_fixed():
    from appliance.distill.drift import choose_groups, silhouette

    rng = np.random.default_rng(2)
    axes = np.eye(16, dtype=np.float32)[:2]
    two = np.concatenate([a + 0.05 * rng.standard_normal((30, 16)).astype(np.float32) for a in axes])
    two /= np.linalg.norm(two, axis=1, keepdims=True)
    labels = choose_groups(two)
    assert len(set(labels[:30].tolist())) == 1 and len(set(labels[30:].tolist())) == 1 and labels[0] != labels[30]
    assert silhouette(two, labels) > 0.8
    noise = rng.standard_normal((60, 512)).astype(np.float32)  # the embedder's width
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert set(choose_groups(noise).tolist()) == {0}  # no structure: one group
