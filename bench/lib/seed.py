#!/usr/bin/env python3
"""Publishes N realistic notices (French text) to one commune, through the API,
so that its feed is what a busy town hall's feed looks like (about 15 KB for 20)."""
import json
import random
import sys
import urllib.request

base, token, commune, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(42)
titles = [
    "Coupure d'eau rue des Lilas", "Travaux de voirie avenue de la Gare", "Marché de Noël sur la place",
    "Fermeture exceptionnelle de la mairie", "Collecte des encombrants", "Alerte canicule : restez au frais",
    "Inscriptions à la cantine scolaire", "Conseil municipal du mois", "Vigilance orange orages",
    "Campagne de vaccination antigrippale", "Nouveaux horaires de la médiathèque", "Fête de la musique",
]
sentences = [
    "Les services techniques interviendront de 8 h à 12 h ; la circulation sera alternée.",
    "Merci de ne pas stationner le long de la chaussée pendant toute la durée des travaux.",
    "Pour tout renseignement, l'accueil de la mairie est ouvert du lundi au vendredi.",
    "Les riverains seront informés individuellement par courrier dans les prochains jours.",
    "En cas d'urgence, composez le 18 ou le 112 depuis un téléphone portable.",
    "La municipalité vous remercie de votre compréhension et de votre patience.",
    "Un arrêté municipal précise les conditions d'accès au site et les horaires d'ouverture.",
    "Les enfants doivent être accompagnés d'un adulte ; l'entrée est libre et gratuite.",
    "Pensez à vérifier l'état de vos gouttières et à rentrer le mobilier de jardin.",
    "Les personnes âgées ou isolées peuvent se faire connaître auprès du CCAS.",
]
categories = ["info", "event", "roadworks", "school", "health", "weather", "alert"]
for i in range(n):
    body = " ".join(rng.choice(sentences) for _ in range(rng.randint(4, 6)))
    doc = {
        "communes": [commune],
        "title": rng.choice(titles),
        "body": body,
        "category": rng.choice(categories),
        "priority": "urgent" if i % 9 == 0 else "normal",
        "notify": False,
    }
    if i % 4 == 0:
        doc["attachments"] = [{"url": f"https://mairie.example.fr/documents/arrete-{i}.pdf",
                               "name": f"Arrêté municipal n° 2026-{i:03d}", "content_type": "application/pdf"}]
    req = urllib.request.Request(base + "/v1/publications", data=json.dumps(doc).encode(),
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
