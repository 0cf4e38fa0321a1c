"""The experiments admin: results page with inline SVG charts, conclude confirmation, variant validation, actions."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.urls import reverse

from catalog.models import Customer
from events.models import Interaction
from experiments import services
from experiments.models import BanditWeightLog, Experiment, Impression, SurfaceDefault, Variant
from experiments.validation import VariantSpec
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser(django_user_model: type[AbstractUser]) -> AbstractUser:
    return django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")


@pytest.fixture
def browser(superuser: AbstractUser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


def _running(user: AbstractUser, key: str = "home-test", mode: str = Experiment.Mode.AB) -> Experiment:
    experiment = services.experiment_create(
        key=key,
        name="Home ranker test",
        surface="home",
        mode=mode,
        guardrails={"coverage": 0.01},
        variants=[VariantSpec("control", 0.5, True), VariantSpec("no-ranker", 0.5, False, {"ranker": False})],
    )
    return services.experiment_start(experiment_id=experiment.pk, user_id=user.pk)


def _traffic(experiment: Experiment) -> None:
    item = ItemFactory()
    start = experiment.start_at
    variants = list(Variant.objects.filter(experiment=experiment))
    customers = Customer.objects.bulk_create(Customer(external_id=f"adm-{i}") for i in range(40))
    Impression.objects.bulk_create(
        Impression(
            request_id=f"adm-{i}", served_at=start + dt.timedelta(days=i % 3), surface="home", customer=c,
            experiment=experiment, variant=variants[i % 2], item_pks=[item.pk],
        )
        for i, c in enumerate(customers)
    )  # fmt: skip
    Interaction.objects.bulk_create(
        Interaction(
            event_id=f"adm-click-{i}", customer=c, item=item, type=Interaction.Type.CLICK,
            occurred_at=start + dt.timedelta(days=i % 3, minutes=1), request_id=f"adm-{i}",
        )
        for i, c in enumerate(customers) if i % 3 == 0
    )  # fmt: skip


def test_results_page_renders_tables_and_svg_chart(browser: Client, superuser: AbstractUser) -> None:
    experiment = _running(superuser)
    _traffic(experiment)

    response = browser.get(reverse("admin:experiments_experiment_results", args=[experiment.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    assert "<svg" in html
    assert "<polyline" in html
    assert "Conversion rate (primary)" in html
    for text in ("Click-through rate", "Revenue per customer", "Sample ratio check", "Chance to beat control"):
        assert text in html
    assert "no-ranker" in html
    assert "coverage" in html


def test_results_page_colours_a_difference_only_when_the_holm_adjusted_test_agrees(
    browser: Client, superuser: AbstractUser
) -> None:
    """Two challengers, each 5% -> 6.5% conversion on 2,000 customers: each interval excludes 0 (raw p 0.041), but
    Holm-adjusted over the two the p-value is 0.082. The page coloured both green; now neither (a twelfth tester)."""
    experiment = services.experiment_create(
        key="holm-colour", name="Holm colour", surface="home", primary_metric="conversion_rate",
        variants=[VariantSpec("control", 0.34, True), VariantSpec("b", 0.33, False, {"ranker": False}),
                  VariantSpec("c", 0.33, False, {"diversity_cap": 0.5})],
    )  # fmt: skip
    experiment = services.experiment_start(experiment_id=experiment.pk, user_id=superuser.pk)
    item = ItemFactory()
    impressions, purchases = [], []
    for variant, converted in zip(
        Variant.objects.filter(experiment=experiment).order_by("pk"), (100, 130, 130), strict=True
    ):
        for i in range(2000):
            request_id = f"hc-{variant.name}-{i}"
            impressions.append(
                Impression(
                    request_id=request_id,
                    served_at=experiment.start_at,
                    surface="home",
                    session_id=request_id,
                    experiment=experiment,
                    variant=variant,
                    item_pks=[item.pk],
                )
            )
            if i < converted:
                purchases.append(
                    Interaction(
                        event_id=f"hc-buy-{request_id}",
                        session_id=request_id,
                        item=item,
                        type=Interaction.Type.PURCHASE,
                        occurred_at=experiment.start_at,
                        request_id=request_id,
                    )
                )
    Impression.objects.bulk_create(impressions)
    Interaction.objects.bulk_create(purchases)

    results = services.experiment_results(key="holm-colour")
    b = results.variant("b").conversion_rate.vs_control
    assert b.ci_low > 0
    assert b.p_value < 0.05
    assert b.p_value_holm > 0.05
    html = browser.get(reverse("admin:experiments_experiment_results", args=[experiment.pk])).content.decode()
    assert 'class="num better"' not in html
    assert f"{b.p_value_holm:.4f} <small>(raw {b.p_value:.4f})</small>" in html


def test_bandit_results_page_draws_the_weights_history(browser: Client, superuser: AbstractUser) -> None:
    experiment = _running(superuser, key="bandit", mode=Experiment.Mode.BANDIT)
    variants = list(Variant.objects.filter(experiment=experiment))
    BanditWeightLog.objects.bulk_create(
        BanditWeightLog(experiment=experiment, variant=v, weight=w, at=experiment.start_at + dt.timedelta(hours=1))
        for v, w in zip(variants, (0.3, 0.7), strict=True)
    )

    response = browser.get(reverse("admin:experiments_experiment_results", args=[experiment.pk]))

    assert response.status_code == 200
    assert "Traffic weights (bandit)" in response.content.decode()


def test_conclude_page_sets_the_winner_as_default(browser: Client, superuser: AbstractUser) -> None:
    experiment = _running(superuser)
    url = reverse("admin:experiments_experiment_conclude", args=[experiment.pk])

    page = browser.get(url)
    assert page.status_code == 200
    assert "No winner" in page.content.decode()
    response = browser.post(url, {"winner": "no-ranker"})

    assert response.status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.CONCLUDED
    assert experiment.winner.name == "no-ranker"
    assert SurfaceDefault.objects.get(surface="home").config == {"ranker": False}


def test_start_and_stop_actions(browser: Client, superuser: AbstractUser) -> None:
    experiment = services.experiment_create(
        key="act", name="a", surface="cart", variants=[VariantSpec("control", 0.5, True), VariantSpec("b", 0.5)]
    )
    changelist = reverse("admin:experiments_experiment_changelist")

    browser.post(changelist, {"action": "start_selected", "_selected_action": [experiment.pk]})
    assert Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.RUNNING
    browser.post(changelist, {"action": "stop_selected", "_selected_action": [experiment.pk]})
    assert Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.STOPPED


def _add_form(variants: list[tuple[str, str, bool, str]]) -> dict[str, object]:
    data: dict[str, object] = {
        "key": "new-exp", "name": "New", "hypothesis": "", "surface": "home", "namespace": "", "namespace_start": "",
        "namespace_end": "", "mode": "ab",
        "primary_metric": "ctr", "minimum_detectable_effect": "0.05", "attribution_window_hours": "24",
        "guardrails": "{}", "hash_seed": "",
        "variants-TOTAL_FORMS": str(len(variants)), "variants-INITIAL_FORMS": "0",
        "variants-MIN_NUM_FORMS": "2", "variants-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    for i, (name, weight, control, config) in enumerate(variants):
        data |= {f"variants-{i}-name": name, f"variants-{i}-weight": weight, f"variants-{i}-config": config}
        if control:
            data[f"variants-{i}-is_control"] = "on"
    return data


def test_add_form_rejects_weights_not_summing_to_one_and_bad_configs(browser: Client) -> None:
    url = reverse("admin:experiments_experiment_add")

    response = browser.post(url, _add_form([("control", "0.5", True, "{}"), ("b", "0.6", False, "{}")]))
    assert response.status_code == 200
    assert "must sum to 1" in response.content.decode()
    response = browser.post(
        url, _add_form([("control", "0.5", True, "{}"), ("b", "0.5", False, '{"diversity_cap": 7}')])
    )
    assert response.status_code == 200
    assert "diversity_cap" in response.content.decode()
    assert not Experiment.objects.exists()

    response = browser.post(url, _add_form([("control", "0.5", True, "{}"), ("b", "0.5", False, '{"ranker": false}')]))
    assert response.status_code == 302
    experiment = Experiment.objects.get(key="new-exp")
    assert experiment.hash_seed == "new-exp"
    assert experiment.status == Experiment.Status.DRAFT
    assert experiment.created_by is not None


def test_results_page_requires_staff(client: Client, superuser: AbstractUser) -> None:
    experiment = _running(superuser)

    response = client.get(reverse("admin:experiments_experiment_results", args=[experiment.pk]))

    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_running_experiment_page_is_locked_and_links_results(browser: Client, superuser: AbstractUser) -> None:
    experiment = _running(superuser)

    html = browser.get(reverse("admin:experiments_experiment_change", args=[experiment.pk])).content.decode()

    assert reverse("admin:experiments_experiment_results", args=[experiment.pk]) in html
    assert reverse("admin:experiments_experiment_conclude", args=[experiment.pk]) in html
    assert 'name="variants-0-weight"' not in html  # the live split cannot be edited
    assert 'name="surface"' not in html
    listing = browser.get(reverse("admin:experiments_experiment_changelist")).content.decode()
    assert "home-test" in listing
    assert "delete_selected" not in listing


def test_a_started_experiment_can_be_renamed(browser: Client, superuser: AbstractUser) -> None:
    """The one edit a live experiment allows (name, hypothesis) was a 500: the read-only variant rows submit no
    fields, and the formset's check read them (found 5 December)."""
    experiment = _running(superuser)
    url = reverse("admin:experiments_experiment_change", args=[experiment.pk])
    count = Variant.objects.filter(experiment=experiment).count()
    data = {
        "name": "renamed only", "hypothesis": "why", "_save": "Save",
        "variants-TOTAL_FORMS": str(count), "variants-INITIAL_FORMS": str(count),
        "variants-MIN_NUM_FORMS": "2", "variants-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    for i, variant in enumerate(Variant.objects.filter(experiment=experiment).order_by("pk")):
        data |= {f"variants-{i}-id": str(variant.pk), f"variants-{i}-experiment": str(experiment.pk)}

    response = browser.post(url, data)

    assert response.status_code == 302, response.content.decode()[:2000]
    experiment.refresh_from_db()
    assert (experiment.name, experiment.hypothesis, experiment.status) == ("renamed only", "why", "running")


def test_surface_default_admin_validates_and_publishes(browser: Client, django_capture_on_commit_callbacks) -> None:
    url = reverse("admin:experiments_surfacedefault_add")

    response = browser.post(url, {"surface": "home", "config": '{"exploration_share": 3}'})
    assert response.status_code == 200
    assert "exploration_share" in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = browser.post(url, {"surface": "home", "config": '{"exploration_share": 0.2}'})

    assert response.status_code == 302
    assert SurfaceDefault.objects.get(surface="home").config == {"exploration_share": 0.2}
    assert len(callbacks) == 1  # the snapshot version bump


@pytest.mark.parametrize("tiny", ["5e-324", "0.005"])
def test_add_form_refuses_a_weight_between_0_and_1_percent_on_its_row(browser: Client, tiny: str) -> None:
    url = reverse("admin:experiments_experiment_add")
    rest = str(1 - float(tiny))

    response = browser.post(url, _add_form([("control", rest, True, "{}"), ("b", tiny, False, '{"ranker": false}')]))

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.errors[0] == {}
    assert formset.errors[1] == {
        "weight": [f"The weight must be 0 or at least 0.01 (1% of the experiment's traffic), got {float(tiny):g}."]
    }
    assert "must be 0 or at least 0.01" in response.content.decode()
    assert not Experiment.objects.exists()

    taken = browser.post(url, _add_form([("control", "0.99", True, "{}"), ("b", "0.01", False, '{"ranker": false}')]))
    assert taken.status_code == 302
    assert sorted(Variant.objects.values_list("weight", flat=True)) == [0.01, 0.99]
