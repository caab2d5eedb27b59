from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("recoveryapp", "0003_fill_style")]

    operations = [
        migrations.CreateModel(
            name="Tasting",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("note", models.CharField(max_length=200)),
                (
                    "recipe",
                    models.ForeignKey(
                        on_delete=models.deletion.CASCADE, related_name="tastings", to="recoveryapp.recipe"
                    ),
                ),
            ],
        ),
    ]
